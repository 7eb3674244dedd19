"""Per-class metric tables as JSON, CSV, Markdown and a terminal table; per-image scores as CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rlr.atomic import write_text
from rlr.data.types import ImageRecord

Row = Mapping[str, float | None]
MEAN_ROW = "mean"


def _columns(per_class: Mapping[str, Row]) -> list[str]:
    first = next(iter(per_class.values()), {})
    return list(first.keys())


def percent(value: float | None) -> str:
    """A metric fraction as a percentage with one decimal, as every table shows it; 'n/a' when undefined."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_table(per_class: Mapping[str, Row], mean: Row, markdown: bool = False) -> str:
    """Classes as rows, metrics as columns, values in percent; the mean is the last row."""
    columns = _columns(per_class)
    rows = [[name] + [percent(r.get(c)) for c in columns] for name, r in per_class.items()]
    rows.append([MEAN_ROW] + [percent(mean.get(c)) for c in columns])
    header = ["class"] + columns
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule] + [fmt(r) for r in rows[:-1]] + [rule, fmt(rows[-1])]) + "\n"


def write_metric_tables(run_dir: Path, per_class: Mapping[str, Row], mean: Row, protocol: Mapping[str, object]) -> None:
    """metrics.json (fractions, null when undefined), metrics.csv and metrics.md (percent)."""
    payload = {"per_class": dict(per_class), "mean": dict(mean), "protocol": dict(protocol)}
    write_text(run_dir / "metrics.json", json.dumps(payload, indent=2) + "\n")

    columns = _columns(per_class)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class"] + columns)
    for name, row in list(per_class.items()) + [(MEAN_ROW, mean)]:
        writer.writerow([name] + ["" if row.get(c) is None else f"{row[c]:.6f}" for c in columns])
    write_text(run_dir / "metrics.csv", buffer.getvalue())

    settings = "\n".join(f"- {key}: {value}" for key, value in protocol.items())
    write_text(run_dir / "metrics.md", format_table(per_class, mean, markdown=True) + "\nProtocol:\n" + settings + "\n")


def write_scores(path: Path, per_class: Mapping[str, tuple[Sequence[ImageRecord], np.ndarray]]) -> None:
    """One row per test image: class, defect type, label, image score, path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "defect_type", "label", "score", "path"])
    for class_name, (records, scores) in per_class.items():
        for record, score in zip(records, scores):
            writer.writerow(
                [class_name, record.defect_type, record.label, f"{float(score):.6f}", str(record.image_path)]
            )
    write_text(path, buffer.getvalue())
