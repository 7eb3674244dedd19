"""Heatmap overlays of a prediction on its image, for `rlr predict` files and the `rlr serve` page.

`rlr predict` writes them with a legend (`annotated_overlay`): decision, score and normalised
score, and the colour bar with the values its two ends stand for, so a file read on its own
says what it shows. The `rlr serve` page draws its own colour bar and numbers beside the image.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rlr.data.transforms import read_image, to_tensor
from rlr.deploy.thresholds import normalised_score
from rlr.results import PredictionResult

HEAT_CMAP = "jet"
LEGEND_FONT_PX = (6, 32)  # smallest and largest legend text height
LEGEND_ALPHA = 180  # of the band's black background, out of 255


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
    heat = colormaps[HEAT_CMAP](np.clip((result.map_resized(width, height) - low) / (high - low), 0.0, 1.0))[..., :3]
    blended = 0.5 * np.asarray(image, dtype=np.float32) / 255.0 + 0.5 * heat
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))


def legend_lines(result: PredictionResult, short: bool = False) -> tuple[str, str, str]:
    """(the decision with the score and normalised score, the colour bar's low end, its high end);
    `short`: the same in fewer characters, for narrow images."""
    low, high = heat_scale(result)
    normalised = normalised_score(result.score, result.threshold)
    if normalised is None:
        line = f"score {result.score:.4g}" if short else f"score {result.score:.4g} | no threshold: run rlr calibrate"
        return line, f"{low:.3g}", f"{high:.3g}"
    if short:
        return f"{result.decision} {normalised:.2f}", f"{low:.3g}", f"{high:.3g}"
    line = f"{result.decision} | score {result.score:.4g} | normalised {normalised:.2f} (0.5 = threshold)"
    return line, f"{low:.3g}", f"{high:.3g}" + (" = threshold" if high == result.threshold else "")


def annotated_overlay(result: PredictionResult, image: Image.Image) -> Image.Image:
    """`render_overlay` with a legend band along its bottom: `legend_lines`, the colour bar between
    the values its ends stand for. Drawn inside the image, so the file keeps the input's size and
    its pixels line up with the input's; text shrinks (then shortens) to fit the width."""
    overlay = render_overlay(result, image)
    width, height = overlay.size
    band = Image.new("RGBA", overlay.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(band)
    (line, low, high), font, size = _fitting_legend(draw, result, width, height)
    pad = max(1, size // 4)
    top = max(0, height - 2 * (size + pad) - pad)
    draw.rectangle((0, top, width, height), fill=(0, 0, 0, LEGEND_ALPHA))
    draw.text((pad, top + pad), line, fill="white", font=font)
    bar_top = top + size + 2 * pad
    left = 2 * pad + int(draw.textlength(low, font=font))
    right = width - 2 * pad - int(draw.textlength(high, font=font))
    draw.text((pad, bar_top), low, fill="white", font=font)
    draw.text((right + pad, bar_top), high, fill="white", font=font)
    if right > left:
        from matplotlib import colormaps

        colours = colormaps[HEAT_CMAP](np.linspace(0.0, 1.0, right - left))[:, :3]
        bar = np.repeat(np.round(colours * 255.0).astype(np.uint8)[None], size, axis=0)
        band.paste(Image.fromarray(bar).convert("RGBA"), (left, bar_top))
    return Image.alpha_composite(overlay.convert("RGBA"), band).convert("RGB")


def _fitting_legend(
    draw: ImageDraw.ImageDraw, result: PredictionResult, width: int, height: int
) -> tuple[tuple[str, str, str], ImageFont.FreeTypeFont | ImageFont.ImageFont, int]:
    """The legend's lines, font and text height: the full lines at the largest size that fits, else the short ones."""
    smallest, largest = LEGEND_FONT_PX
    start = int(np.clip(min(width / 30, height / 10), smallest, largest))
    for short in (False, True):
        lines = legend_lines(result, short)
        for size in range(start, smallest - 1, -1):
            font = ImageFont.load_default(size=size)
            needed = max(draw.textlength(lines[0], font=font), draw.textlength(lines[1] + lines[2], font=font) + size)
            if needed <= width - size:
                return lines, font, size
    return lines, font, smallest


def display_image(path: str | os.PathLike) -> Image.Image:
    """The file as 8-bit RGB for display, read by the same rules as for scoring (any mode, EXIF applied)."""
    pixels = to_tensor(read_image(path), path).expand(3, -1, -1)
    return Image.fromarray(np.round(pixels.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
