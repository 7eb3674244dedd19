"""Failure analysis: which classes are weak, and which test images make them weak.

Classes are ranked by mAD (the report's per-class summary, the number that also marks the metric
table's *worst* rows), worst first. For the weakest classes we list the highest-scored normal
test images (false-alarm candidates) and the lowest-scored defective ones (misses), each with its
score's rank among the class's test images: a normal image above many defects, or a defect below
many normals, is what costs the class its image AUROC, and its map shows what the model saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from rlr.atomic import write_text
from rlr.report.figures import display_image, heatmap_grid
from rlr.report.tables import percent
from rlr.results import ClassResult

FAILURES_NAME = "failures.md"
FAILURE_CLASSES = 2  # the lowest-ranked classes analysed (every ranked class when there are at most two)
FAILURE_IMAGES = 3  # images of each kind (false alarms, misses) shown per analysed class
RANK_METRICS = ("mAD", "I-AUROC", "P-AUROC")  # the ranking key first, then the paper's two headline metrics


@dataclass(frozen=True)
class Case:
    """One test image placed among its class's scores."""

    index: int  # into the class's records
    score: float
    rank: int  # 1 = the highest image score among the class's test images
    crossed: int  # normal image: defective images scored strictly lower; defective: normals scored strictly higher


@dataclass(frozen=True)
class ClassFailures:
    """A class's worst false alarms (highest first) and misses (lowest first)."""

    false_alarms: list[Case]
    misses: list[Case]
    n_normal: int
    n_defective: int


def rank_classes(per_class: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """Classes with an mAD, lowest first (ties by name); a class with no defined metric cannot be ranked."""
    ranked = sorted((row["mAD"], name) for name, row in per_class.items() if row.get("mAD") is not None)
    return [name for _, name in ranked]


def analysed_classes(per_class: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """The classes whose failures the report shows: the FAILURE_CLASSES lowest-ranked ones."""
    return rank_classes(per_class)[:FAILURE_CLASSES]


def find_failures(scores: np.ndarray, labels: np.ndarray, count: int = FAILURE_IMAGES) -> ClassFailures:
    """The `count` highest-scored normal and lowest-scored defective images, with their ranks."""
    scores = np.asarray(scores, dtype=np.float64)
    defective = np.asarray(labels) > 0
    order = np.argsort(-scores, kind="stable")

    def case(i: int) -> Case:
        if defective[i]:
            crossed = int((scores[~defective] > scores[i]).sum())
        else:
            crossed = int((scores[defective] < scores[i]).sum())
        return Case(i, float(scores[i]), 1 + int((scores > scores[i]).sum()), crossed)

    normals = [int(i) for i in order if not defective[i]]
    defects = [int(i) for i in order[::-1] if defective[i]]
    return ClassFailures(
        [case(i) for i in normals[:count]],
        [case(i) for i in defects[:count]],
        len(normals),
        len(defects),
    )


def image_name(path: Path) -> str:
    """Folder and file name: enough to find an image in an MVTec-style test tree (`scratch/003.png`)."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def failure_grid(result: ClassResult, failures: ClassFailures, image_size: int, resize: str = "stretch") -> bytes:
    """False alarms then misses as columns of (image, ground truth, map), on the class's colour scale.

    `resize` (the run's data.resize) places each image as the model saw it, under its map.
    """
    cases = failures.false_alarms + failures.misses
    total = len(result.records)
    titles = []
    for case in cases:
        record = result.records[case.index]
        kind = "normal" if record.label <= 0 else record.defect_type[:14]
        titles.append(f"{kind}, rank {case.rank}/{total}\nscore {case.score:.3g}")
    return heatmap_grid(
        [display_image(result.records[c.index].image_path, image_size, resize) for c in cases],
        [result.masks[c.index] for c in cases],
        [result.maps[c.index] for c in cases],
        titles,
        vmin=float(result.maps.min()),
        vmax=float(result.maps.max()),
    )


def _md_path(path: Path) -> str:
    """A path as Markdown table text: `|` would end the cell."""
    return str(path).replace("|", "\\|")


def failures_markdown(run_name: str, results: Mapping[str, ClassResult]) -> str:
    """The class ranking and, for the analysed classes, their false alarms and misses as Markdown."""
    per_class = {name: r.metrics for name, r in results.items()}
    ranked = rank_classes(per_class)
    analysed = ranked[:FAILURE_CLASSES]
    lines = [
        f"# Failure analysis: {run_name}",
        "",
        "Classes ranked by mAD, worst first (percent). Ranks below: 1 = the highest image score among the",
        "class's test images. A normal image scored above defective ones, or a defective image scored below",
        "normal ones, is what lowers the class's I-AUROC.",
        "",
        "| rank | class | " + " | ".join(RANK_METRICS) + " |",
        "|---:|---|" + "---:|" * len(RANK_METRICS),
    ]
    for position, name in enumerate(ranked, 1):
        cells = " | ".join(percent(per_class[name].get(m)) for m in RANK_METRICS)
        lines.append(f"| {position} | {name} | {cells} |")
    unranked = [name for name in results if name not in ranked]
    if unranked:
        lines += ["", f"Not ranked (no metric defined): {', '.join(unranked)}."]
    for name in analysed:
        result = results[name]
        failures = find_failures(result.scores, np.array([r.label for r in result.records]))
        total = len(result.records)
        lines += ["", f"## {name}", "", "Highest-scored normal images (false-alarm candidates):", ""]
        if failures.false_alarms:
            lines += [f"| image | score | rank (of {total}) | defective images scored lower |", "|---|---:|---:|---:|"]
            lines += [
                f"| {_md_path(result.records[c.index].image_path)} | {c.score:.6g} | {c.rank} "
                f"| {c.crossed} of {failures.n_defective} |"
                for c in failures.false_alarms
            ]
        else:
            lines.append("None: the class has no normal test image.")
        lines += ["", "Lowest-scored defective images (misses):", ""]
        if failures.misses:
            lines += [
                f"| image | defect type | score | rank (of {total}) | normal images scored higher |",
                "|---|---|---:|---:|---:|",
            ]
            lines += [
                f"| {_md_path(result.records[c.index].image_path)} | {result.records[c.index].defect_type} "
                f"| {c.score:.6g} | {c.rank} | {c.crossed} of {failures.n_normal} |"
                for c in failures.misses
            ]
        else:
            lines.append("None: the class has no defective test image.")
    return "\n".join(lines) + "\n"


def write_failures(run_dir: Path, results: Mapping[str, ClassResult]) -> Path:
    """Write `run_dir/failures.md` atomically and return its path."""
    path = Path(run_dir) / FAILURES_NAME
    write_text(path, failures_markdown(Path(run_dir).name, results))
    return path
