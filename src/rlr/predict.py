"""`rlr predict`: score files, folders and globs; write a CSV, heatmap overlays and raw maps.

A file that cannot be read is reported and skipped; every other file is still scored and written,
and the caller learns about the skipped ones (the CLI exits non-zero after listing them).
"""

from __future__ import annotations

import csv
import glob
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from rlr.atomic import atomic_open
from rlr.data.split import is_ignored, is_image_file
from rlr.data.transforms import read_image, to_tensor
from rlr.errors import DataError

if TYPE_CHECKING:
    from rlr.inference import Model, PredictionResult

CSV_NAME = "predictions.csv"
CSV_COLUMNS = ("path", "class", "score", "threshold", "decision", "overlay", "map")
_GLOB_CHARS = frozenset("*?[")


@dataclass
class PredictSummary:
    """What `predict_files` wrote, and the one-line problem of every file it skipped."""

    csv_path: Path
    scored: int
    anomalous: int
    problems: list[str]


def images_under(folder: Path) -> list[Path]:
    """Image files below `folder`, recursively and sorted; hidden files and folders are skipped."""
    found = (p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
    return sorted(p for p in found if not any(is_ignored(Path(part)) for part in p.relative_to(folder).parts))


def collect_inputs(items: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursively) and glob patterns into image files, and list what was not found.

    A file named explicitly is always tried; inside folders and glob matches only files with an
    image extension are taken (so a stray notes.txt in a folder is not an error).
    """
    files: list[Path] = []
    problems: list[str] = []
    for item in items:
        text = str(item)
        if _GLOB_CHARS & set(text) and not Path(text).exists():
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            found = [f for m in matches for f in (images_under(m) if m.is_dir() else [m] if is_image_file(m) else [])]
            if not found:
                problems.append(f"{text}: no image file matches")
        elif Path(text).is_dir():
            found = images_under(Path(text))
            if not found:
                problems.append(f"{text}: no image files found in this folder")
        elif Path(text).exists():
            found = [Path(text)]
        else:
            found = []
            problems.append(f"{text}: file not found")
        files.extend(found)
    return list(dict.fromkeys(files)), problems


def heat_scale(result: PredictionResult) -> tuple[float, float]:
    """Colour range of the overlay: half the threshold (blue) to the threshold (red), so colours mean
    the same in every image of a class; without a threshold, the map's own minimum to maximum."""
    if result.threshold is not None and result.threshold > 0:
        return 0.5 * result.threshold, result.threshold
    low, high = float(result.map.min()), float(result.map.max())
    return low, high if high > low else low + 1.0


def render_overlay(result: PredictionResult, image: Image.Image, max_side: int | None = None) -> Image.Image:
    """The image with its anomaly map blended on top (jet colours, 50 %), at the image's own size.

    `max_side` shrinks large images first (for a web page); the map is resized onto the image.
    """
    from matplotlib import colormaps

    image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    width, height = image.size
    low, high = heat_scale(result)
    heat = colormaps["jet"](np.clip((result.map_resized(width, height) - low) / (high - low), 0.0, 1.0))[..., :3]
    blended = 0.5 * np.asarray(image, dtype=np.float32) / 255.0 + 0.5 * heat
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))


def display_image(path: str | os.PathLike) -> Image.Image:
    """The file as 8-bit RGB for display, read by the same rules as for scoring (any mode, EXIF applied)."""
    pixels = to_tensor(read_image(path), path).expand(3, -1, -1)
    return Image.fromarray(np.round(pixels.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def output_names(files: Sequence[Path]) -> dict[Path, Path]:
    """Unique names for each file's outputs: its path below the folder holding all inputs, without
    the extension (`good/001`), or with it where two files differ only by extension (`good/001.jpg`)."""
    if not files:
        return {}
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    relative = [r.relative_to(common) for r in resolved]
    stems = Counter(r.with_suffix("") for r in relative)
    return {f: r.with_suffix("") if stems[r.with_suffix("")] == 1 else r for f, r in zip(files, relative)}


def predict_files(
    model: Model,
    files: Sequence[Path],
    out_dir: Path,
    class_name: str | None = None,
    overlays: bool = True,
    save_maps: bool = False,
    full_size_maps: bool = False,
    batch_size: int | None = None,
) -> PredictSummary:
    """Score `files` and write `predictions.csv` (+ overlays/, maps/) into `out_dir`.

    Outputs mirror the inputs' folders (see `output_names`). Overlays are at each image's own
    resolution; maps (.npy, float32) at the model's image size, or at the image's own size with
    `full_size_maps`. Unreadable files are skipped and listed.
    """
    out_dir = Path(out_dir)
    names = output_names(files)
    step = batch_size or model.config.eval.batch_size
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    with tqdm(total=len(files), desc="predict", unit="img") as bar:
        for start in range(0, len(files), step):
            prepared = []
            for path in files[start : start + step]:
                try:
                    prepared.append(model.prepare(path))
                except DataError as error:
                    problems.append(str(error))
            for result in model.predict_prepared(prepared, class_name, step):
                name = names[Path(result.path)]
                try:
                    rows.append(_write_outputs(result, name, out_dir, overlays, save_maps, full_size_maps))
                except DataError as error:
                    problems.append(str(error))
            bar.update(min(step, len(files) - start))
    csv_path = out_dir / CSV_NAME
    with atomic_open(csv_path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    anomalous = sum(row["decision"] == "anomalous" for row in rows)
    return PredictSummary(csv_path, len(rows), anomalous, problems)


def _write_outputs(
    result: PredictionResult, name: Path, out_dir: Path, overlays: bool, save_maps: bool, full_size_maps: bool
) -> dict[str, str]:
    row = {
        "path": str(result.path),
        "class": result.class_name or "",
        "score": f"{result.score:.6g}",
        "threshold": "" if result.threshold is None else f"{result.threshold:.6g}",
        "decision": result.decision,
        "overlay": "",
        "map": "",
    }
    if overlays:
        target = out_dir / "overlays" / f"{name}.png"
        with atomic_open(target, "wb") as handle:
            render_overlay(result, display_image(result.path)).save(handle, format="PNG")
        row["overlay"] = str(target.relative_to(out_dir))
    if save_maps:
        target = out_dir / "maps" / f"{name}.npy"
        with atomic_open(target, "wb") as handle:
            np.save(handle, result.map_at_original_size() if full_size_maps else result.map)
        row["map"] = str(target.relative_to(out_dir))
    return row
