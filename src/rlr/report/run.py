"""Everything `rlr test` writes beside a run, rendered from the engine's results."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from rlr.metrics import mean_over_classes
from rlr.report.decisions import read_run_calibration
from rlr.report.failures import write_failures
from rlr.report.html import write_html_report
from rlr.report.tables import write_metric_tables, write_scores
from rlr.report.training import read_loss_curve
from rlr.results import ClassResult


def write_results(
    out_dir: Path,
    results: Mapping[str, ClassResult],
    protocol: Mapping[str, object],
    image_size: int,
    resize: str = "stretch",
) -> None:
    """metrics.{json,csv,md}, scores.csv, report.html and failures.md for one test of a run.

    `protocol` names the evaluation settings printed beside every table; `image_size` and `resize`
    (data.resize) are how the maps were computed, so the report's thumbnails are placed as the model
    saw them. The report also shows what `out_dir` holds as a run folder: the decisions at its
    calibrated threshold and its training loss curve.
    """
    per_class = {name: r.metrics for name, r in results.items()}
    mean = mean_over_classes(per_class)
    write_metric_tables(out_dir, per_class, mean, protocol)
    write_scores(out_dir / "scores.csv", {name: (r.records, r.scores) for name, r in results.items()})
    calibration, losses = read_run_calibration(out_dir), read_loss_curve(out_dir)
    write_html_report(
        out_dir, results, mean, protocol, image_size, calibration=calibration, losses=losses, resize=resize
    )
    write_failures(out_dir, results)
