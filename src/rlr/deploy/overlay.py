"""Heatmap overlays of a prediction on its image, for `rlr predict` files and the `rlr serve` page."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from rlr.data.transforms import read_image, to_tensor
from rlr.results import PredictionResult


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
