"""Qualitative comparison of runs: rows of (test image, ground truth, one anomaly map per run).

The RLR supplementary's Fig. 1 (image, ground truth, UniAD map, RLR map) for any runs that test the
same images.

Which images, unless given: the defective test images the runs disagree on most. For each run and
class, an image's score rank is the place of its image score among the class's test images, scaled
to [0, 1] (0 lowest, ties averaged); an image's disagreement is its largest minus its smallest rank
over the runs (1: one run scores it highest of its class, another lowest). Ranks, not raw scores,
because runs score on different scales. Rows are spread over classes: first each class's most
disputed image (larger disagreement first), then each class's second, and so on; at equal
disagreement within a class, the image the runs rank lower on average (the harder defect) first.

Colour: UniAD's L2 distance and RLR's squared error plus cosine distance live on different scales,
so each run's map is rescaled by that run's own maps of the class's normal test images:
(map - median) / (99th percentile - median) of their pixel values, so 0 is a typical normal pixel
and 1 a value only 1 % of normal pixels exceed. A row shares one colour scale, from 0 to its
largest rescaled value (at least 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy.stats import rankdata

from rlr.atomic import write_bytes
from rlr.config import RunConfig, load_config
from rlr.engine.build import build_split
from rlr.engine.evaluate import test_results
from rlr.errors import RlrError
from rlr.report.figures import DPI, PANEL_INCHES, _png, clear_ticks, display_image, show_mask, show_overlay
from rlr.report.text import plot_text
from rlr.results import ClassResult

DEFAULT_SAMPLES = 6
NORMAL_PERCENTILE = 99.0
PANEL_PX = round(PANEL_INCHES * DPI)
TITLE_PX = 30  # two title lines above each row
COLORBAR_PX = 80
CAPTION_PX = 50
LABEL_CHARS = 30  # longest run name that fits above a panel
CAPTION = (
    "Maps over the image, each rescaled by its own run's maps of the class's normal test images:\n"
    f"0 = their median pixel value, 1 = their {NORMAL_PERCENTILE:g}th percentile; one colour scale per row.\n"
    "Above each map: that run's image score and its rank among the class's test images (1 = highest)."
)


@dataclass(frozen=True)
class Pick:
    """One row of the figure: a test image, and how much the runs disagree on it (None: chosen by hand)."""

    class_name: str
    index: int  # into the class's test records
    image_path: Path
    disagreement: float | None


@dataclass(frozen=True)
class FigureRow:
    """What one row draws: the image, its mask, one rescaled map and one note per run."""

    image: np.ndarray  # (H, W, 3) in [0, 1]
    mask: np.ndarray  # (H, W) bool
    maps: list[np.ndarray]  # (H, W) each, on the rescaled scale
    heading: str  # class and defect type
    name: str  # file name
    notes: list[str]  # per run: score and rank


def score_ranks(scores: np.ndarray) -> np.ndarray:
    """Each score's place among the class's scores in [0, 1], 0 the lowest, ties averaged."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size < 2:
        return np.zeros(scores.shape)
    return (rankdata(scores) - 1) / (scores.size - 1)


def pick_disputed(
    labels: Mapping[str, np.ndarray], scores: Mapping[str, Sequence[np.ndarray]], count: int
) -> list[tuple[str, int, float]]:
    """(class, index, disagreement) of up to `count` defective images, by the rule in the module docstring."""
    queues: dict[str, list[tuple[float, int]]] = {}
    for name, class_labels in labels.items():
        ranks = np.stack([score_ranks(s) for s in scores[name]])
        spread = ranks.max(axis=0) - ranks.min(axis=0)
        defective = np.flatnonzero(np.asarray(class_labels) > 0)
        order = sorted(defective, key=lambda i: (-spread[i], ranks[:, i].mean()))
        queues[name] = [(float(spread[i]), int(i)) for i in order]
    picks: list[tuple[str, int, float]] = []
    depth = 0
    while len(picks) < count:
        layer = [(queue[depth], name) for name, queue in queues.items() if depth < len(queue)]
        if not layer:
            break
        layer.sort(key=lambda item: -item[0][0])  # stable: class order on ties
        picks += [(name, index, spread) for (spread, index), name in layer]
        depth += 1
    return picks[:count]


def normal_scale(maps: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(offset, scale) that map a run's class maps to 0 = normal median, 1 = normal 99th percentile.

    Uses every pixel of the class's normal test maps (all its maps when it has no normal image).
    """
    normal = np.asarray(labels) <= 0
    reference = maps[normal] if normal.any() else maps
    median, high = np.percentile(reference, [50.0, NORMAL_PERCENTILE])
    return float(median), max(float(high - median), 1e-12)


def figure_size(rows: int, runs: int) -> tuple[int, int]:
    """(width, height) in pixels: a panel per image, mask and run, titles, colour bars and caption."""
    return PANEL_PX * (2 + runs) + COLORBAR_PX, (PANEL_PX + TITLE_PX) * rows + CAPTION_PX


def qualitative_figure(rows: Sequence[FigureRow], run_labels: Sequence[str]) -> bytes:
    """One row per image: image, ground truth, then each run's map on the row's shared colour scale."""
    width, height = figure_size(len(rows), len(run_labels))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(rows), 2 + len(run_labels), squeeze=False)
    for r, row in enumerate(rows):
        first = r == 0  # column titles go above the first row
        vmax = max(1.0, *(float(m.max()) for m in row.maps))
        axes[r, 0].imshow(row.image)
        axes[r, 0].set_title(plot_text(("image\n" if first else "") + row.heading), fontsize=7)
        show_mask(axes[r, 1], row.mask)
        axes[r, 1].set_title(plot_text(("ground truth\n" if first else "") + row.name), fontsize=7)
        overlay = None
        for c, (amap, note, label) in enumerate(zip(row.maps, row.notes, run_labels)):
            overlay = show_overlay(axes[r, 2 + c], row.image, amap, row.mask, 0.0, vmax)
            axes[r, 2 + c].set_title(plot_text(f"{label}\n{note}" if first else note), fontsize=7)
        if overlay is not None:
            fig.colorbar(overlay, ax=axes[r, 2:].tolist(), shrink=0.9, aspect=12).ax.tick_params(labelsize=6)
    clear_ticks(axes.flat)
    fig.supxlabel(CAPTION, fontsize=6.5, multialignment="left")
    return _png(fig)


def _test_images(run_dir: Path) -> dict[str, list[Path]]:
    """The run's test images per class, from its config alone: nothing is scored."""
    split = build_split(load_config(run_dir / "config.yaml"))
    return {name: [Path(r.image_path).resolve() for r in records] for name, records in split.test.items()}


def _difference(first: Mapping[str, list[Path]], second: Mapping[str, list[Path]]) -> str | None:
    """How two runs' test sets differ, in a few words; None when they are the same."""
    if set(first) != set(second):
        only_first = ", ".join(sorted(set(first) - set(second))) or "none"
        only_second = ", ".join(sorted(set(second) - set(first))) or "none"
        return f"classes differ (only in the first: {only_first}; only in the second: {only_second})"
    for name, paths in first.items():
        if len(paths) != len(second[name]):
            return f"class {name} has {len(paths)} vs {len(second[name])} test images"
        for a, b in zip(paths, second[name]):
            if a != b:
                return f"class {name}: {a} vs {b}"
    return None


def check_same_images(run_dirs: Sequence[Path]) -> dict[str, list[Path]]:
    """The test images (resolved paths per class) every run shares; a one-line error names two that differ."""
    first, *others = run_dirs
    reference = _test_images(first)
    for other in others:
        problem = _difference(reference, _test_images(other))
        if problem:
            raise RlrError(f"runs {first} and {other} do not test the same images: {problem}")
    return reference


def _locate(
    images: Sequence[Path], shared: Mapping[str, list[Path]], classes: Sequence[str] | None
) -> list[tuple[str, int]]:
    """(class, index) of each requested image, in the order given."""
    where = {path: (name, i) for name, paths in shared.items() for i, path in enumerate(paths)}
    found = []
    for image in images:
        place = where.get(Path(image).resolve())
        if place is None:
            raise RlrError(f"{image}: not a test image of these runs")
        if classes and place[0] not in classes:
            raise RlrError(f"{image}: belongs to class {place[0]}, not to {', '.join(classes)}")
        found.append(place)
    return found


def run_labels(run_dirs: Sequence[Path], configs: Sequence[RunConfig]) -> list[str]:
    """Column titles: folder name and model; the path as given when two folders share a name."""
    names = [d.name for d in run_dirs]
    unique = len(set(names)) == len(names)
    labels = [f"{n if unique else d} ({c.model.name})" for n, d, c in zip(names, run_dirs, configs)]
    return [label if len(label) <= LABEL_CHARS else "..." + label[-(LABEL_CHARS - 3) :] for label in labels]


def _at_size(amap: np.ndarray, size: int) -> np.ndarray:
    """A map resized bilinearly to the figure's size (runs may test at different image sizes)."""
    if amap.shape == (size, size):
        return amap
    resized = F.interpolate(torch.from_numpy(amap)[None, None], (size, size), mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def _shared_resize(run_dirs: Sequence[Path], configs: Sequence[RunConfig]) -> str:
    """The runs' one data.resize: maps placed by different rules do not line up on one image."""
    first = configs[0].data.resize
    for run_dir, config in zip(run_dirs, configs):
        if config.data.resize != first:
            raise RlrError(
                f"runs {run_dirs[0]} and {run_dir} place images differently "
                f"(data.resize {first} vs {config.data.resize}): their maps cannot share one image"
            )
    return first


def _row(class_name: str, index: int, per_run: Sequence[ClassResult], size: int, resize: str) -> FigureRow:
    first = per_run[0]
    record = first.records[index]
    labels = np.array([r.label for r in first.records])
    maps, notes = [], []
    for result in per_run:
        offset, scale = normal_scale(result.maps, labels)
        maps.append((_at_size(result.maps[index], size) - offset) / scale)
        score = result.scores[index]
        rank = 1 + int((result.scores > score).sum())
        notes.append(f"score {score:.3g}, rank {rank}/{len(result.scores)}")
    heading = f"{class_name} / {record.defect_type}"[:LABEL_CHARS]
    name = Path(record.image_path).name[:LABEL_CHARS]
    return FigureRow(display_image(record.image_path, size, resize), first.masks[index], maps, heading, name, notes)


def write_qualitative(
    run_dirs: Sequence[Path],
    out: Path,
    classes: Sequence[str] | None = None,
    samples: int = DEFAULT_SAMPLES,
    images: Sequence[Path] | None = None,
    device_name: str | None = None,
) -> list[Pick]:
    """Score the runs' test images, choose the rows (given `images`, else the most disputed), write the PNG."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise RlrError("give at least one run")
    if samples < 1:
        raise RlrError(f"--samples must be at least 1, got {samples}")
    shared = check_same_images(run_dirs)
    resize = _shared_resize(run_dirs, [load_config(d / "config.yaml") for d in run_dirs])  # before any scoring
    unknown = sorted(set(classes or ()) - set(shared))
    if unknown:
        raise RlrError(f"no class {', '.join(unknown)} in these runs (they have {', '.join(shared)})")
    wanted = _locate(images, shared, classes) if images else None
    needed = sorted({name for name, _ in wanted}) if wanted else classes
    tested = [test_results(d, device_name, needed) for d in run_dirs]
    results = [per_class for _, per_class in tested]

    if wanted:
        rows = [(name, index, None) for name, index in wanted]
    else:
        labels = {name: np.array([r.label for r in result.records]) for name, result in results[0].items()}
        scores = {name: [per_class[name].scores for per_class in results] for name in labels}
        rows = pick_disputed(labels, scores, samples)
        if not rows:
            raise RlrError(f"no defective test image in {', '.join(labels)}: nothing to compare")

    configs = [config for config, _ in tested]
    size = configs[0].data.image_size
    figure_rows = [
        _row(name, index, [per_class[name] for per_class in results], size, resize) for name, index, _ in rows
    ]
    write_bytes(out, qualitative_figure(figure_rows, run_labels(run_dirs, configs)))
    return [Pick(name, index, results[0][name].records[index].image_path, spread) for name, index, spread in rows]
