"""Score images with an exported rlr model using only onnxruntime, numpy and Pillow.

Copy this file next to `model.onnx` and `model.json` (`rlr export` does) onto any machine:

    python rlr_onnx_runner.py model.onnx image1.png image2.jpg [--class bottle]

prints `path,score,threshold,decision` lines. In Python: `OnnxScorer("model.onnx").predict(paths)`.
Preprocessing reproduces rlr's `load_image`: EXIF orientation applied, alpha dropped, grey
repeated to RGB, 8-bit / 255 and 16-bit / 65535, then a bilinear antialiased resize of the float
pixels (Pillow's filter on mode "F" bands is the one torch's antialiased bilinear follows).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

_UINT16_MAX = 65535.0


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


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) -> (3, size, size): bilinear with antialiasing on float bands, clamped to [0, 1]."""
    if pixels.shape[1:] != (size, size):
        bands = [Image.fromarray(band, mode="F").resize((size, size), Image.Resampling.BILINEAR) for band in pixels]
        pixels = np.clip(np.stack([np.asarray(b, dtype=np.float32) for b in bands]), 0.0, 1.0)
    return np.broadcast_to(pixels, (3, size, size)).astype(np.float32)


def load(path: str | Path, size: int) -> np.ndarray:
    """Read an image file as float32 (3, size, size) in [0, 1]."""
    with Image.open(path) as image:
        image.load()
        return resize(image_pixels(ImageOps.exif_transpose(image)), size)


class OnnxScorer:
    """An exported model and its JSON: maps, scores and decisions for image files or arrays."""

    def __init__(self, model_path: str | Path, info_path: str | Path | None = None, threads: int = 0) -> None:
        model_path = Path(model_path)
        info_path = Path(info_path) if info_path else model_path.with_name("model.json")
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        self.size = int(self.info["preprocessing"]["image_size"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) float32 in [0, 1] -> maps (B, S, S), scores (B,)."""
        maps, scores = self.session.run(["map", "score"], {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return maps, scores

    def threshold(self, class_name: str | None = None) -> float | None:
        """The class's threshold if calibrated, else the global one; None without calibration."""
        thresholds = self.info.get("thresholds")
        if not thresholds:
            return None
        return thresholds["per_class"].get(class_name, thresholds["global"]) if class_name else thresholds["global"]

    def predict(self, paths: list[str | Path], class_name: str | None = None, batch_size: int = 16) -> list[dict]:
        """One dict per file: path, score, map (S, S), threshold, decision ('anomalous'/'normal'/'')."""
        threshold = self.threshold(class_name)
        results = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            maps, scores = self.run(np.stack([load(p, self.size) for p in chunk]))
            for path, amap, score in zip(chunk, maps, scores):
                decision = "" if threshold is None else ("anomalous" if score > threshold else "normal")
                row = {"path": str(path), "score": float(score), "map": amap, "threshold": threshold}
                results.append({**row, "decision": decision})
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score images with an exported rlr ONNX model.")
    parser.add_argument("model", help="model.onnx (model.json must lie beside it)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--class", dest="class_name", help="use this class's threshold")
    args = parser.parse_args(argv)
    scorer = OnnxScorer(args.model)
    print("path,score,threshold,decision")
    for row in scorer.predict(args.images, args.class_name):
        threshold = "" if row["threshold"] is None else f"{row['threshold']:.6g}"
        print(f"{row['path']},{row['score']:.6g},{threshold},{row['decision']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
