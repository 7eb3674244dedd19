"""The built-in demo dataset: real photographs from scikit-image turned into an MVTec-style set.

Every class is a texture "product" cut from one photograph that ships inside scikit-image, so the
demo and the core tests run offline. Normal variation comes from random crops, flips and small
photometric changes; defects are synthesised on top of a normal image and their masks mark
exactly the pixels that changed. Each sample draws from its own random stream, seeded by
(seed, class, split, index), so the files do not depend on the order they were generated in.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from rlr.errors import ConfigError
from rlr.paths import cache_root

GENERATOR_VERSION = 1
INFO_NAME = "DEMO_INFO.json"
DEFAULT_SIZES = {"image_size": 256, "n_train": 40, "n_test_good": 10, "n_test_defect": 5}

_Rgb = tuple[float, float, float]


@dataclass(frozen=True)
class _ClassSpec:
    """How one class is cut from its photograph, and which defects it can show."""

    source: str  # name of a scikit-image photo that loads without a download
    kinds: tuple[str, ...]
    tint: tuple[_Rgb, _Rgb] | None = None  # gray photos: RGB for black and for white
    crop: tuple[float, float] = (0.5, 0.65)  # crop side as a fraction of the photo's short side


_CLASSES: dict[str, _ClassSpec] = {
    "brick": _ClassSpec("brick", ("scratch", "hole", "contamination"), ((0.22, 0.09, 0.05), (0.95, 0.68, 0.55))),
    "grass": _ClassSpec("grass", ("hole", "contamination", "stain"), ((0.05, 0.14, 0.03), (0.72, 0.9, 0.45))),
    "gravel": _ClassSpec("gravel", ("scratch", "stain", "contamination"), ((0.1, 0.1, 0.11), (0.93, 0.9, 0.84))),
    "tissue": _ClassSpec("immunohistochemistry", ("stain", "hole", "scratch"), crop=(0.45, 0.6)),
}
_FOREIGN_PHOTOS = ("chelsea", "coffee", "rocket")  # extra sources for contamination texture

DEMO_CLASSES: tuple[str, ...] = tuple(_CLASSES)
DEMO_DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "contamination", "stain")
DEMO_DEFECTS_BY_CLASS: dict[str, tuple[str, ...]] = {c: s.kinds for c, s in _CLASSES.items()}
_SPLITS = ("train", "good") + DEMO_DEFECT_KINDS  # position = stream id in the seed


# ---------------------------------------------------------------------------------------------
# Source photographs and normal images


@cache
def _photo(name: str, tint: tuple[_Rgb, _Rgb] | None = None) -> Image.Image:
    """Load a scikit-image photo as RGB once; gray photos are coloured by a linear tint."""
    import skimage.data

    pixels = getattr(skimage.data, name)()
    if pixels.ndim == 2:
        gray = pixels.astype(np.float32)[..., None] / 255.0
        dark, light = (np.asarray(t, np.float32) for t in tint or ((0, 0, 0), (1, 1, 1)))
        pixels = np.round((dark + gray * (light - dark)) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels[..., :3], "RGB")


def _random_crop(rng: np.random.Generator, photo: Image.Image, size: int, frac: tuple[float, float]) -> np.ndarray:
    """Resample a random square window of `photo` to size x size; float32 RGB in [0, 1]."""
    side = rng.uniform(*frac) * min(photo.size)
    x0 = rng.uniform(0, photo.width - side)
    y0 = rng.uniform(0, photo.height - side)
    crop = photo.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    return np.asarray(crop, np.float32) / 255.0


def _photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Small gamma, contrast and brightness changes, as from lighting drift on a line."""
    image = image ** rng.uniform(0.95, 1.05)
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.95, 1.05) + mean + rng.uniform(-0.03, 0.03)
    return np.clip(image, 0.0, 1.0)


def _normal_image(rng: np.random.Generator, class_name: str, size: int) -> np.ndarray:
    """One defect-free image: crop, random flips, photometric jitter; uint8 RGB."""
    spec = _CLASSES[class_name]
    image = _random_crop(rng, _photo(spec.source, spec.tint), size, spec.crop)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < 0.5:
        image = image[::-1]
    return _to_uint8(_photometric(rng, image))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Round to 8 bits, the precision the PNG files hold, so clean and defective compare exactly."""
    return np.ascontiguousarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# Shapes: smooth noise, irregular blobs, curved lines


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int = 3, octaves: int = 4) -> np.ndarray:
    """Value noise: random grids of doubling resolution, cubic-upsampled and summed; in [0, 1]."""
    total = np.zeros(shape, np.float64)
    for octave in range(octaves):
        n = cells * 2**octave + 1
        grid = rng.random((n, n))
        rows = np.linspace(0, n - 1, shape[0])
        cols = np.linspace(0, n - 1, shape[1])
        coords = np.meshgrid(rows, cols, indexing="ij")
        total += 0.5**octave * ndimage.map_coordinates(grid, coords, order=3, mode="nearest")
    return (total - total.min()) / max(total.max() - total.min(), 1e-12)


def _blob(rng: np.random.Generator, size: int, area: tuple[float, float]) -> np.ndarray:
    """An irregular region covering a random `area` fraction of the image, fully inside it.

    Thresholding noise minus a radial fall-off keeps the shape ragged but compact; the threshold
    is a quantile, so the area is controlled instead of left to chance.
    """
    pixels = rng.uniform(*area) * size * size
    side = min(size - 2, int(np.ceil(np.sqrt(pixels / 0.35))))
    yy, xx = np.mgrid[-1 : 1 : side * 1j, -1 : 1 : side * 1j]
    radius2 = xx**2 + yy**2
    inside = radius2 < 1.0
    field = fractal_noise(rng, (side, side)) - 0.7 * radius2
    keep = min(pixels / inside.sum(), 1.0)
    local = inside & (field >= np.quantile(field[inside], 1.0 - keep))
    top, left = rng.integers(0, size - side + 1, 2)
    region = np.zeros((size, size), bool)
    region[top : top + side, left : left + side] = local
    return region


def _curve(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin, gently bending line: a random walk of the heading, rasterised with a width."""
    length = rng.uniform(0.3, 0.6) * size
    steps = int(np.ceil(length * 2))  # half-pixel steps leave no gaps
    bend = ndimage.gaussian_filter1d(rng.normal(0.0, 1.0, steps), steps / 8) * rng.uniform(0.5, 2)
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(bend) / steps * 8
    start = rng.uniform(0.2, 0.8, 2) * size
    points = start + np.cumsum(0.5 * np.stack([np.sin(heading), np.cos(heading)], 1), 0)
    points = np.round(points).astype(int)
    points = points[((points >= 0) & (points < size)).all(1)]
    line = np.ones((size, size), bool)
    line[points[:, 0], points[:, 1]] = False
    half_width = rng.uniform(1.0, 2.0) * size / 256
    return ndimage.distance_transform_edt(line) <= max(half_width, 0.5)


def _soft(region: np.ndarray, floor: float, size: int) -> np.ndarray:
    """Opacity inside `region`: 1 in the core, easing to `floor` at the edge; 0 outside."""
    eased = ndimage.gaussian_filter(region.astype(np.float32), sigma=1.5 * size / 256)
    return np.where(region, floor + (1.0 - floor) * np.clip(2 * eased - 1, 0, 1), 0.0)[..., None]


# ---------------------------------------------------------------------------------------------
# Defects: each returns (region, float image); only pixels inside the region may differ

_Change = tuple[np.ndarray, np.ndarray]


def _scratch(rng: np.random.Generator, clean: np.ndarray, size: int, _: str) -> _Change:
    """Thin curved lines, bright on dark material and dark on bright material."""
    region = _curve(rng, size)
    if rng.random() < 0.4:
        region |= _curve(rng, size)
    target = 0.05 if clean[region].mean() > 0.5 else 0.95
    strength = rng.uniform(0.6, 0.85)
    return region, clean * (1 - strength) + target * strength


def _hole(rng: np.random.Generator, clean: np.ndarray, size: int, _: str) -> _Change:
    """Missing material: a ragged region where the dark background shows through."""
    region = _blob(rng, size, (0.01, 0.03))
    depth = 0.03 + 0.05 * fractal_noise(rng, (size, size))[..., None]
    alpha = _soft(region, 0.6, size)
    return region, clean * (1 - alpha) + depth * alpha


def _contamination(rng: np.random.Generator, clean: np.ndarray, size: int, class_name: str) -> _Change:
    """A foreign body: texture from another photograph inside a ragged region."""
    region = _blob(rng, size, (0.01, 0.04))
    others = [c for c in DEMO_CLASSES if c != class_name]
    donors = [(_CLASSES[c].source, _CLASSES[c].tint) for c in others]
    donors += [(name, None) for name in _FOREIGN_PHOTOS]
    source, tint = donors[rng.integers(len(donors))]
    foreign = _random_crop(rng, _photo(source, tint), size, (0.3, 0.6))
    alpha = _soft(region, 0.6, size) * rng.uniform(0.85, 1.0)
    return region, clean * (1 - alpha) + foreign * alpha


def _stain(rng: np.random.Generator, clean: np.ndarray, size: int, _: str) -> _Change:
    """A translucent coloured film: multiplies the colour and adds a little dye."""
    region = _blob(rng, size, (0.015, 0.05))
    dye = rng.uniform(0.2, 0.75, 3).astype(np.float32)
    alpha = _soft(region, 0.35, size) * rng.uniform(0.6, 0.9)
    return region, clean * (1 - alpha + alpha * dye) + 0.06 * alpha * dye


_DEFECTS: dict[str, Callable[[np.random.Generator, np.ndarray, int, str], _Change]] = {
    "scratch": _scratch,
    "hole": _hole,
    "contamination": _contamination,
    "stain": _stain,
}


# ---------------------------------------------------------------------------------------------
# Samples


def _rng(seed: int, class_name: str, split: str, index: int) -> np.random.Generator:
    """A stream of its own per sample, so generation order never changes a file."""
    key = [seed, DEMO_CLASSES.index(class_name), _SPLITS.index(split), index]
    return np.random.default_rng(key)


def make_normal(class_name: str, split: str, index: int, seed: int = 0, image_size: int = 256) -> np.ndarray:
    """The defect-free image `index` of `split` ("train" or "good"); uint8 (H, W, 3)."""
    return _normal_image(_rng(seed, class_name, split, index), class_name, image_size)


def make_defect(
    class_name: str, kind: str, index: int, seed: int = 0, image_size: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean, defective, mask) for one defect sample; mask is True exactly where pixels differ.

    The defect is drawn again until at least one pixel changes after rounding, so a mask is
    never empty.
    """
    if kind not in DEMO_DEFECTS_BY_CLASS[class_name]:
        raise ConfigError(f"demo class {class_name!r} has no defect kind {kind!r}")
    rng = _rng(seed, class_name, kind, index)
    clean = _normal_image(rng, class_name, image_size)
    base = clean.astype(np.float32) / 255.0
    while True:
        region, changed = _DEFECTS[kind](rng, base, image_size, class_name)
        defective = np.where(region[..., None], _to_uint8(changed), clean)
        mask = (defective != clean).any(axis=2)
        if mask.any():
            return clean, defective, mask


# ---------------------------------------------------------------------------------------------
# Writing the dataset


def _save_png(array: np.ndarray, path: Path) -> None:
    """Lossless PNG; PIL writes no timestamp, so equal arrays give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_class(folder: Path, class_name: str, seed: int, sizes: dict[str, int]) -> None:
    """Write one class's train/good, test/good, test/<kind> and ground_truth/<kind> files."""
    size = sizes["image_size"]
    for split, sub, count in (("train", "train/good", sizes["n_train"]), ("good", "test/good", sizes["n_test_good"])):
        for i in range(count):
            _save_png(make_normal(class_name, split, i, seed, size), folder / sub / f"{i:03d}.png")
    for kind in DEMO_DEFECTS_BY_CLASS[class_name]:
        for i in range(sizes["n_test_defect"]):
            _, defective, mask = make_defect(class_name, kind, i, seed, size)
            _save_png(defective, folder / "test" / kind / f"{i:03d}.png")
            mask_u8 = mask.astype(np.uint8) * 255
            _save_png(mask_u8, folder / "ground_truth" / kind / f"{i:03d}_mask.png")


def _info(seed: int, sizes: dict[str, int]) -> dict:
    """What DEMO_INFO.json records: enough to tell how and from what the set was made."""
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        **sizes,
        "classes": list(DEMO_CLASSES),
        "defect_kinds": list(DEMO_DEFECT_KINDS),
        "defects_by_class": {c: list(k) for c, k in DEMO_DEFECTS_BY_CLASS.items()},
        "source_photos": {c: f"skimage.data.{s.source}" for c, s in _CLASSES.items()},
        "contamination_photos": [f"skimage.data.{p}" for p in _FOREIGN_PHOTOS],
    }


def _check_sizes(seed: int, sizes: dict[str, int]) -> dict[str, int]:
    """Fill defaults and reject unknown or nonsensical sizes before any file is written."""
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise ConfigError(f"unknown demo size(s) {sorted(unknown)}; known: {list(DEFAULT_SIZES)}")
    full = {**DEFAULT_SIZES, **sizes}
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"demo seed must be a non-negative integer, got {seed!r}")
    for key, value in full.items():
        low = 32 if key == "image_size" else 1
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"demo {key} must be an integer >= {low}, got {value!r}")
    return full


def _install(tmp: Path, root: Path) -> None:
    """Move the finished folder into place, replacing whatever (incomplete) folder was there."""
    old = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old.", dir=root.parent))
        os.replace(root, old / root.name)
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_demo(
    root: Path, seed: int = 0, image_size: int = 256, n_train: int = 40, n_test_good: int = 10, n_test_defect: int = 5
) -> Path:
    """Write the demo set in MVTec AD layout to `root` and return `root`.

    Everything is built in a hidden sibling folder and renamed into place after DEMO_INFO.json,
    so an interrupted run never leaves a folder that looks complete.
    """
    sizes = _check_sizes(
        seed, {"image_size": image_size, "n_train": n_train, "n_test_good": n_test_good, "n_test_defect": n_test_defect}
    )
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp.", dir=root.parent))
    try:
        for class_name in DEMO_CLASSES:
            _write_class(tmp / class_name, class_name, seed, sizes)
        (tmp / INFO_NAME).write_text(json.dumps(_info(seed, sizes), indent=2) + "\n")
        _install(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _is_complete(folder: Path, expected: dict) -> bool:
    """Complete means DEMO_INFO.json exists and describes exactly the requested dataset."""
    try:
        return json.loads((folder / INFO_NAME).read_text()) == expected
    except (OSError, ValueError):
        return False


def ensure_demo(cache_dir: Path | None = None, seed: int = 0, **sizes: int) -> Path:
    """Return a complete demo dataset under `cache_dir`, generating it only when missing.

    The folder name carries the generator version, seed and sizes, so changed parameters never
    pick up stale files. `sizes` are generate_demo's keyword arguments (image_size, n_train, ...).
    """
    full = _check_sizes(seed, sizes)
    name = (
        f"v{GENERATOR_VERSION}-seed{seed}-{full['image_size']}px-train{full['n_train']}"
        f"-good{full['n_test_good']}-defect{full['n_test_defect']}"
    )
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "demo"
    folder = folder / name
    if not _is_complete(folder, _info(seed, full)):
        generate_demo(folder, seed, **full)
    return folder
