"""Report figures as PNG bytes: per-class image-level ROC curves, heatmap grids, shared panel helpers.

Figures are drawn with matplotlib's object API on an Agg canvas (no display, no pyplot global
state) and stored as 256-colour PNGs, which keeps an HTML report with every class's grid small.
Every text from data reaches matplotlib through `plot_text` (names need not be UTF-8).
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from PIL import Image

from rlr.data.transforms import load_image
from rlr.report.text import plot_text

PANEL_INCHES = 1.7  # one thumbnail: 170 px at DPI
DPI = 100
HEATMAP_CMAP = "jet"


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact ROC points (fpr, tpr) from (0, 0), one per distinct score; None with a single label."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) > 0
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tps = np.cumsum(hits)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def _png(fig: Figure) -> bytes:
    """Render on Agg; store with a 256-colour octree palette (4x smaller than RGB, smooth colourmaps)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    quantized = rgb.quantize(256, method=Image.Quantize.FASTOCTREE)
    palette = np.asarray(quantized.getpalette(), dtype=np.uint8)
    palette[palette >= 252] = 255  # the octree averages white to 253: keep it the page's white
    quantized.putpalette(palette.tolist())
    buffer = io.BytesIO()
    quantized.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]) -> bytes:
    """One ROC curve per class on shared axes, each class's AUROC in the legend."""
    fig = Figure(figsize=(7.5, 5.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    palette = colormaps["tab20"]
    for i, (name, (fpr, tpr, area)) in enumerate(curves.items()):
        ax.plot(fpr, tpr, color=palette(i % 20), linewidth=1.4, label=plot_text(f"{name} ({100 * area:.1f})"))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title("Image-level ROC per class (I-AUROC %)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _png(fig)


def display_image(path: str | os.PathLike, size: int, resize: str = "stretch") -> np.ndarray:
    """(size, size, 3) floats in [0, 1]: the image as the model saw it, before normalisation.

    `resize` is the run's data.resize, so the picture sits where its map does (a letterboxed run
    shows the padding, a center_crop run the crop).
    """
    return load_image(path, size, mode=resize).permute(1, 2, 0).numpy()


def show_mask(ax: Axes, mask: np.ndarray) -> None:
    """A ground-truth mask in black and white, pixels kept sharp."""
    ax.imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def show_overlay(
    ax: Axes, image: np.ndarray, amap: np.ndarray, mask: np.ndarray, vmin: float, vmax: float
) -> AxesImage:
    """The map at half opacity over its image, the ground-truth outline in white: where it fires vs the defect."""
    ax.imshow(image)
    overlay = ax.imshow(amap, cmap=HEATMAP_CMAP, vmin=vmin, vmax=vmax, alpha=0.5)
    if mask.any():
        ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
    return overlay


def clear_ticks(axes: Iterable[Axes]) -> None:
    """Image panels carry no axis ticks."""
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def heatmap_grid(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    vmin: float,
    vmax: float,
) -> bytes:
    """Columns of (image, ground-truth mask, map overlay with GT outline), one colour scale.

    images: (H, W, 3) floats in [0, 1]; masks: (H, W) bool; maps: (H, W) at the image size.
    The fixed vmin/vmax let a reader compare maps across the columns of one class.
    """
    n = len(images)
    fig = Figure(figsize=(PANEL_INCHES * n + 0.9, PANEL_INCHES * 3 + 0.3), dpi=DPI, layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    overlay = None
    for col, (image, mask, amap, title) in enumerate(zip(images, masks, maps, titles)):
        top, middle, bottom = axes[:, col]
        top.imshow(image)
        top.set_title(plot_text(title), fontsize=8)
        show_mask(middle, mask)
        overlay = show_overlay(bottom, image, amap, mask, vmin, vmax)
    clear_ticks(axes.flat)
    for ax, name in zip(axes[:, 0], ("image", "ground truth", "anomaly map")):
        ax.set_ylabel(name, fontsize=8)
    if overlay is not None:
        fig.colorbar(overlay, ax=axes[2, :].tolist(), shrink=0.9, aspect=12).ax.tick_params(labelsize=7)
    return _png(fig)


def pick_examples(scores: np.ndarray, labels: np.ndarray, count: int) -> list[int]:
    """Indices to show: highest- and lowest-scored defects, highest-scored normal, then defects.

    These are the informative cases: the clearest hit, the hardest miss and the worst false
    alarm; remaining places go to further defects (then normals) by descending score.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    defects = [int(i) for i in order if labels[i] > 0]
    normals = [int(i) for i in order if labels[i] <= 0]
    preferred = defects[:1] + defects[-1:] + normals[:1] + defects + normals
    return list(dict.fromkeys(preferred))[:count]
