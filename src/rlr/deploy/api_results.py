"""What /predict answers per image: scores and decision, and on request the map and the overlay.

Runs on the scoring worker (decoding is CPU work too, so it waits its turn with the model).
Images are decoded one at a time and only their resized pixels kept, so a request of many large
images needs the memory of one of them, not all.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image

from rlr.data.transforms import to_tensor
from rlr.deploy.image_bytes import decode_image
from rlr.deploy.model import Model, PreparedImage
from rlr.deploy.overlay import heat_scale, png_bytes, render_overlay
from rlr.deploy.thresholds import normalised_score
from rlr.deploy.uploads import Upload
from rlr.results import PredictionResult

OVERLAY_MAX_SIDE = 1024
DISPLAY_BAND_ROWS = 256  # rows of the full-size pixels converted to 8 bits at once
MapFormat = Literal["none", "png", "array"]


@dataclass(frozen=True)
class ResultOptions:
    """What each answer carries besides the scores."""

    map_format: MapFormat = "none"
    map_size: int = 64  # side of the downsampled array ("array")
    overlay: bool = False  # the overlay and the original as PNG data URLs, with the colour scale


def score_uploads(
    model: Model, uploads: Sequence[Upload], class_name: str | None, options: ResultOptions, max_pixels: int
) -> list[dict]:
    """Decode, score and describe every upload; the first unreadable one raises its DataError."""
    prepared, originals = zip(*(_prepare(model, upload, max_pixels, options.overlay) for upload in uploads))
    results = model.predict_prepared(prepared, class_name)
    return [
        describe(result, upload.name, original, options)
        for result, upload, original in zip(results, uploads, originals)
    ]


def _prepare(model: Model, upload: Upload, max_pixels: int, overlay: bool) -> tuple[PreparedImage, Image.Image | None]:
    """One upload resized for the model, and shrunk for display when asked. Its full-size pixels
    die on return, before the next upload is decoded: held on, they would add one full-size float
    copy to the peak of every request of several large images."""
    pixels = to_tensor(decode_image(upload.data, upload.name, max_pixels), upload.name)
    return model.prepare(pixels), (_display(pixels) if overlay else None)


def describe(result: PredictionResult, name: str, original: Image.Image | None, options: ResultOptions) -> dict:
    """One image's answer; `normalised_score` is the same as `rlr predict`'s (0.5 at the threshold)."""
    threshold = result.threshold
    answer: dict = {
        "name": name,
        "class": result.class_name,
        "score": result.score,
        "normalised_score": normalised_score(result.score, threshold),
        "threshold": threshold,
        "decision": result.decision,
        "size": list(result.original_size),
    }
    if options.map_format == "png":
        answer["map"] = map_png(result.map)
    elif options.map_format == "array":
        answer["map"] = map_array(result.map, options.map_size)
    if original is not None:
        answer["overlay"] = data_url(png_bytes(render_overlay(result, original)))
        answer["original"] = data_url(png_bytes(original))
        answer["colour_scale"] = list(heat_scale(result))
    return answer


def map_png(amap: np.ndarray) -> dict:
    """The map at the model's size as a 16-bit greyscale PNG: 0 is `min`, 65535 is `max`, linear between."""
    low, high = float(amap.min()), float(amap.max())
    scaled = (amap - low) / (high - low) if high > low else np.zeros_like(amap)
    levels = np.round(scaled * 65535.0).astype(np.uint16)
    png = png_bytes(Image.fromarray(levels))
    return {
        "encoding": "png16",
        "width": amap.shape[1],
        "height": amap.shape[0],
        "min": low,
        "max": high,
        "png": base64.b64encode(png).decode("ascii"),
    }


def map_array(amap: np.ndarray, side: int) -> dict:
    """The map averaged down to at most `side` x `side` (box filter), rows of floats."""
    side = min(side, amap.shape[0])
    small = np.asarray(Image.fromarray(amap.astype(np.float32)).resize((side, side), Image.Resampling.BOX))
    return {
        "encoding": "array",
        "width": side,
        "height": side,
        "min": float(small.min()),
        "max": float(small.max()),
        "values": np.round(small.astype(np.float64), 6).tolist(),
    }


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _display(pixels: torch.Tensor) -> Image.Image:
    """The decoded pixels as 8-bit RGB for display (as `rlr predict` shows them), at most OVERLAY_MAX_SIDE.

    Converted DISPLAY_BAND_ROWS rows at a time: the whole image at once took two more full-size
    float copies (700 MiB at 5600 x 5600), doubling the peak of a request that asks for overlays.
    """
    height, width = pixels.shape[-2:]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, DISPLAY_BAND_ROWS):
        band = pixels[:, top : top + DISPLAY_BAND_ROWS].expand(3, -1, -1).permute(1, 2, 0).numpy()
        rgb[top : top + DISPLAY_BAND_ROWS] = np.round(band * 255.0)
    image = Image.fromarray(rgb)
    image.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE), Image.Resampling.BILINEAR)
    return image
