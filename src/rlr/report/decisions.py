"""What the run's calibrated threshold decides on the test set: per class, the image scores of normal
and defective images as histograms with the threshold, and the confusion counts at it.

The threshold is the one `rlr calibrate` stored in the run (thresholds.json, for this last.pt);
nothing here chooses one. An image is anomalous when its score is strictly above it, as in
`rlr predict`. `rlr test` scores from the float16 feature cache and `rlr calibrate` in float32,
so a test score within about 1e-3 of the map range of the threshold may fall on the other side
than `rlr predict` would put it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

from rlr.deploy.thresholds import read_calibration, stored_thresholds
from rlr.engine.runs import CHECKPOINT_NAME
from rlr.errors import ConfigError
from rlr.features.weights import file_digest
from rlr.report.figures import DPI, _png
from rlr.report.text import html_text, plot_text, png_tag
from rlr.results import ClassResult, Thresholds

HISTOGRAM_BINS = 20
PANEL_COLUMNS = 4
COUNTS = ("TP", "FP", "TN", "FN")


@dataclass(frozen=True)
class Calibration:
    """The run's image thresholds as the report uses them (None: none apply) and a sentence (HTML) on
    where they come from, or why there are none."""

    thresholds: Thresholds | None
    note: str


def read_run_calibration(run_dir: Path) -> Calibration:
    """The thresholds calibrated for the run's last.pt; a missing, unreadable or stale file is said in the note
    (the test's metrics do not depend on it, so it never stops `rlr test`)."""
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return Calibration(
            None, f"Not calibrated: {html_text(run_dir)} holds no {CHECKPOINT_NAME}, so no run threshold applies."
        )
    try:
        payload = read_calibration(run_dir, file_digest(checkpoint))
    except ConfigError as error:
        return Calibration(None, f"No threshold shown: {html_text(error)}.")
    if payload is None:
        return Calibration(
            None,
            "Not calibrated: run <code>rlr calibrate RUN</code>, then <code>rlr test RUN</code>, "
            "for the threshold and the confusion counts at it.",
        )
    q = payload.get("quantile")
    rule = f" (quantile {q:g} of their scores)" if isinstance(q, (int, float)) else ""
    if payload.get("normal_dir") is None:
        source = (
            f"the run's held-out normals{rule}, <code>data.normal_test_ratio</code>. They are also the normal test "
            "images of their classes, so those classes' FP counts are held near a share 1 - q by construction: "
            "not an independent estimate"
        )
    else:
        source = f"normal images under <code>{html_text(payload['normal_dir'])}</code>{rule}"
    return Calibration(stored_thresholds(payload), f"Thresholds from <code>rlr calibrate</code> on {source}.")


def confusion_counts(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, int]:
    """TP, FP, TN, FN of the decision `score > threshold` (positive: defective, label > 0)."""
    flagged = np.asarray(scores, dtype=np.float64) > threshold
    defective = np.asarray(labels) > 0
    return {
        "TP": int((flagged & defective).sum()),
        "FP": int((flagged & ~defective).sum()),
        "TN": int((~flagged & ~defective).sum()),
        "FN": int((~flagged & defective).sum()),
    }


def score_histograms(results: Mapping[str, ClassResult], thresholds: Thresholds | None) -> bytes:
    """One panel per class: normal and defective image scores on shared bins, the threshold as a dashed
    line with the confusion counts at it in the title (without thresholds, the histograms alone)."""
    columns = min(PANEL_COLUMNS, max(1, len(results)))
    rows = max(1, math.ceil(len(results) / columns))
    fig = Figure(figsize=(3.1 * columns, 2.4 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (name, result) in zip(axes.flat, results.items()):
        labels = np.array([r.label for r in result.records])
        scores = np.asarray(result.scores, dtype=np.float64)
        bins = np.histogram_bin_edges(scores, bins=HISTOGRAM_BINS)
        for kind, chosen, colour in (("normal", labels <= 0, "tab:blue"), ("defective", labels > 0, "tab:red")):
            count = int(chosen.sum())
            ax.hist(scores[chosen], bins=bins, color=colour, alpha=0.55, label=plot_text(f"{kind} ({count})"))
        title = name
        if thresholds is not None:
            threshold = thresholds.for_class(name)
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=plot_text("threshold"))
            counts = confusion_counts(scores, labels, threshold)
            title += "\n" + " ".join(f"{key} {counts[key]}" for key in COUNTS)
        ax.set_title(plot_text(title), fontsize=8)
        ax.set_xlabel(plot_text("image score"), fontsize=7)
        ax.set_ylabel(plot_text("test images"), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, frameon=False)
    for ax in list(axes.flat)[len(results) :]:
        ax.set_visible(False)
    return _png(fig)


def decisions_section(results: Mapping[str, ClassResult], calibration: Calibration) -> str:
    """The report's section: where the threshold comes from, the counts table, the histograms."""
    parts = ['<h2 id="decisions">Decisions at the calibrated threshold</h2>', f'<p class="note">{calibration.note}</p>']
    thresholds = calibration.thresholds
    if thresholds is not None:
        rows = []
        for name, result in results.items():
            labels = np.array([r.label for r in result.records])
            threshold = thresholds.for_class(name)
            counts = confusion_counts(result.scores, labels, threshold)
            cells = "".join(f"<td>{counts[key]}</td>" for key in COUNTS)
            rows.append(f"<tr><th>{html_text(name)}</th><td>{threshold:.6g}</td>{cells}</tr>")
        head = "".join(f"<th>{key}</th>" for key in COUNTS)
        parts.append(
            f'<table id="confusion">\n<thead><tr><th>class</th><th>threshold</th>{head}</tr></thead>\n'
            f"<tbody>\n{''.join(rows)}\n</tbody>\n</table>"
        )
        parts.append(
            '<p class="note">An image is anomalous when its score is above the threshold (its class\'s own, '
            "else the global one). TP: defective images flagged; FP: normal images flagged; TN: normal images "
            "passed; FN: defective images passed.</p>"
        )
    parts.append(png_tag(score_histograms(results, thresholds), "image score histograms per class"))
    return "\n".join(parts) + "\n"
