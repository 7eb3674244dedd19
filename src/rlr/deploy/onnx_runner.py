"""Score images with an exported rlr model using only onnxruntime, numpy and Pillow.

Copy this file next to `model.onnx` and `model.json` (`rlr export` does) onto any machine:

    python rlr_onnx_runner.py model.onnx image1.png folder/ "cam*/**/*.png" [--class bottle]

prints `path,score,threshold,decision` lines. Files, folders (searched recursively, hidden files
skipped) and glob patterns are taken as `rlr predict` takes them, links that loop back included, and
each real file is scored once; a file that cannot be read is named on stderr in one line and
skipped, and the exit status is 1 at the end. In Python:
`OnnxScorer("model.onnx").predict(paths)`. `ExportedScorer` and `run_cli` hold everything but the
engine, so the OpenVINO runner (`rlr_openvino_runner.py`) shares them.
Preprocessing reproduces rlr's `load_image`: EXIF orientation applied, alpha dropped, grey
repeated to RGB, 8-bit / 255 and 16-bit / 65535, then a bilinear antialiased resize of the float
pixels (Pillow's filter on mode "F" bands is the one torch's antialiased bilinear follows), with
the aspect-ratio rule model.json names (`preprocessing.resize_mode`: stretch, letterbox with
black padding, center_crop; `placement` repeats rlr's, which this file cannot import).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

_UINT16_MAX = 65535.0
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_GLOB_CHARS = frozenset("*?[")


def image_pixels(image: Image.Image) -> np.ndarray:
    """A decoded image as float32 (C, H, W) in [0, 1], C = 1 or 3, by rlr's rules for modes."""
    mode = image.mode
    if mode.startswith("I;16"):
        return (np.asarray(image).astype(np.float32) / _UINT16_MAX)[None]
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
            low, high = float(np.iinfo(np.int32).min), float(np.iinfo(np.int32).max)
            return ((values - low) / (high - low)).astype(np.float32)[None]
        return (values / _UINT16_MAX).astype(np.float32)[None]
    if mode == "F":
        return np.array(image, dtype=np.float32)[None]
    if mode in ("1", "L"):
        return (np.asarray(image.convert("L"), dtype=np.float32) / 255.0)[None]
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    rgb = image if mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0


def placement(width: int, height: int, size: int, mode: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the image box used, the box of the square it fills), each (left, top, width, height): rlr's rule."""
    if mode == "stretch":
        return (0, 0, width, height), (0, 0, size, size)
    if mode == "letterbox":
        scale = size / max(width, height)
        fitted_width, fitted_height = max(1, round(width * scale)), max(1, round(height * scale))
        offset = ((size - fitted_width) // 2, (size - fitted_height) // 2)
        return (0, 0, width, height), (*offset, fitted_width, fitted_height)
    if mode == "center_crop":
        side = min(width, height)
        return ((width - side) // 2, (height - side) // 2, side, side), (0, 0, size, size)
    raise ValueError(f"model.json: unknown preprocessing.resize_mode {mode!r}")


def resize(pixels: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """(C, H, W) -> (3, size, size): bilinear with antialiasing on float bands, clamped to [0, 1], placed by `mode`."""
    (left, top, width, height), (into_left, into_top, into_width, into_height) = placement(
        pixels.shape[2], pixels.shape[1], size, mode
    )
    pixels = pixels[:, top : top + height, left : left + width]
    if (height, width) != (into_height, into_width):
        target = (into_width, into_height)
        bands = [Image.fromarray(band, mode="F").resize(target, Image.Resampling.BILINEAR) for band in pixels]
        pixels = np.clip(np.stack([np.asarray(b, dtype=np.float32) for b in bands]), 0.0, 1.0)
    canvas = np.zeros((pixels.shape[0], size, size), dtype=np.float32)  # letterbox padding: black
    canvas[:, into_top : into_top + into_height, into_left : into_left + into_width] = pixels
    return np.broadcast_to(canvas, (3, size, size)).astype(np.float32)


def load(path: str | Path, size: int, mode: str = "stretch") -> np.ndarray:
    """Read an image file as float32 (3, size, size) in [0, 1]."""
    with Image.open(path) as image:
        image.load()
        return resize(image_pixels(ImageOps.exif_transpose(image)), size, mode)


def _walk(top: Path, depth: int | None, problems: list[str]) -> Iterator[Path]:
    """Every entry below `top` (hidden ones left out), at most `depth` levels down (None: all).

    Links to folders are followed, except one back into a folder the walk is already inside
    (`up -> ..`, `self -> .`): `glob` followed those until the path grew too long, listing the same
    images on every turn. rlr's own walk (`rlr.deploy.inputs`) has the same rule.
    """
    stack = [(top, depth, frozenset({os.path.realpath(top)}))]
    while stack:
        folder, left, inside = stack.pop()
        try:
            entries = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
        except OSError as error:
            problems.append(f"{folder}: cannot list folder ({(error.strerror or type(error).__name__).lower()})")
            continue
        for entry in entries:
            real = os.path.realpath(entry) if entry.is_dir() else None
            if real in inside:
                continue
            yield entry
            if real is not None and (left is None or left > 1):
                stack.append((entry, None if left is None else left - 1, inside | {real}))


def _images_under(folder: Path, problems: list[str]) -> list[Path]:
    return sorted(p for p in _walk(folder, None, problems) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether path components match pattern components; a `**` component stands for any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatch(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _glob(pattern: str, problems: list[str]) -> list[Path]:
    """Sorted paths matching `pattern` by glob's rules (`**`: any number of folders; hidden names never match)."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    anchor, wanted = Path(*parts[:fixed]), parts[fixed:]
    if not anchor.is_dir():
        return []
    depth = None if "**" in wanted else len(wanted)
    return sorted(e for e in _walk(anchor, depth, problems) if _matches(e.relative_to(anchor).parts, wanted))


def collect_images(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (recursively) and glob patterns -> image files, plus one line per item that named none.

    A file named explicitly is always tried; in folders and glob matches only image extensions count.
    A file reached twice (named twice, through a link, by two patterns) is kept once, where first named.
    """
    files: list[Path] = []
    problems: list[str] = []
    for item in items:
        path = Path(item)
        if _GLOB_CHARS & set(item) and not path.exists():
            found = [
                f
                for m in _glob(item, problems)
                for f in (_images_under(m, problems) if m.is_dir() else [m])
                if f.suffix.lower() in IMAGE_SUFFIXES
            ]
            problems += [] if found else [f"{item}: no image file matches"]
        elif path.is_dir():
            found = _images_under(path, problems)
            problems += [] if found else [f"{item}: no image files found in this folder"]
        elif path.exists():
            found = [path]
        else:
            found = []
            problems.append(f"{item}: file not found")
        files.extend(found)
    first_seen: dict[str, Path] = {}
    for file in files:
        first_seen.setdefault(os.path.realpath(file), file)
    return list(first_seen.values()), problems


def load_or_problem(path: str | Path, size: int, mode: str = "stretch") -> tuple[np.ndarray | None, str | None]:
    """(pixels, None), or (None, one line saying why the file cannot be read)."""
    try:
        return load(path, size, mode), None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        return None, f"{path}: not a readable image ({type(error).__name__}: {reason})"


class ExportedScorer:
    """An exported model and its JSON: maps, scores and decisions for image files or arrays.

    Subclasses supply `run` (one engine); reading, thresholds and decisions live here.
    """

    def __init__(self, model_path: str | Path, info_path: str | Path | None = None) -> None:
        model_path = Path(model_path)
        info_path = Path(info_path) if info_path else model_path.with_name("model.json")
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        self.size = int(self.info["preprocessing"]["image_size"])
        self.resize_mode = self.info["preprocessing"].get("resize_mode", "stretch")  # absent: exported before it
        placement(1, 1, self.size, self.resize_mode)  # an unknown mode is refused here, not at the first image

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) float32 in [0, 1] -> maps (B, S, S), scores (B,)."""
        raise NotImplementedError

    def threshold(self, class_name: str | None = None) -> float | None:
        """The class's threshold if calibrated, else the global one; None without calibration."""
        thresholds = self.info.get("thresholds")
        if not thresholds:
            return None
        return thresholds["per_class"].get(class_name, thresholds["global"]) if class_name else thresholds["global"]

    def predict(
        self,
        paths: list[str | Path],
        class_name: str | None = None,
        batch_size: int = 16,
        problems: list[str] | None = None,
    ) -> list[dict]:
        """One dict per file: path, score, map (S, S), threshold, decision ('anomalous'/'normal'/'').

        An unreadable file raises ValueError, or with a `problems` list is skipped and its line appended.
        """
        threshold = self.threshold(class_name)
        results = []
        for start in range(0, len(paths), batch_size):
            chunk, pixels = [], []
            for path in paths[start : start + batch_size]:
                image, problem = load_or_problem(path, self.size, self.resize_mode)
                if problem is not None and problems is None:
                    raise ValueError(problem)
                if problem is not None:
                    problems.append(problem)
                else:
                    chunk.append(path)
                    pixels.append(image)
            if not chunk:
                continue
            maps, scores = self.run(np.stack(pixels))
            for path, amap, score in zip(chunk, maps, scores):
                decision = "" if threshold is None else ("anomalous" if score > threshold else "normal")
                row = {"path": str(path), "score": float(score), "map": amap, "threshold": threshold}
                results.append({**row, "decision": decision})
        return results


class OnnxScorer(ExportedScorer):
    """The exported graph on onnxruntime's CPU provider, with every graph optimisation stated.

    `threads` 0 is onnxruntime's default: one per physical core of the machine, even when the
    process may run on fewer (`taskset`, a container's CPU set): pass the number it may use there.
    """

    def __init__(self, model_path: str | Path, info_path: str | Path | None = None, threads: int = 0) -> None:
        import onnxruntime  # here, so that the OpenVINO runner can share this file without it

        super().__init__(model_path, info_path)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(["map", "score"], {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return maps, scores


def run_cli(scorer_type: type[ExportedScorer], argv: list[str] | None, engine: str) -> int:
    """The runners' command line: score files, folders and globs; print CSV; skip unreadable files."""
    parser = argparse.ArgumentParser(description=f"Score images with an exported rlr model on {engine}.")
    parser.add_argument("model", help="the exported model (model.json must lie beside it)")
    parser.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument("--class", dest="class_name", help="use this class's threshold")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    args = parser.parse_args(argv)
    scorer = scorer_type(args.model)
    files, problems = collect_images(args.images)
    print("path,score,threshold,decision")
    for row in scorer.predict(files, args.class_name, args.batch_size, problems):
        threshold = "" if row["threshold"] is None else f"{row['threshold']:.6g}"
        print(f"{row['path']},{row['score']:.6g},{threshold},{row['decision']}")
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} input(s) skipped", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(OnnxScorer, argv, "onnxruntime")


if __name__ == "__main__":
    sys.exit(main())
