"""One self-contained HTML page per tested run: protocol, metric table, ROC curves, decisions at the
calibrated threshold, training loss, failures, heatmaps.

Everything is inline (CSS, base64 PNGs), so the file can be mailed or opened offline; every
text that comes from data (class names, paths, settings) goes through `html_text` (escaped, and
undecodable bytes of a file name shown as `\\xNN`, so the page stays valid UTF-8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from rlr.atomic import write_text
from rlr.metrics import METRIC_NAMES, auroc
from rlr.report.decisions import Calibration, decisions_section
from rlr.report.failures import (
    FAILURE_CLASSES,
    FAILURE_IMAGES,
    RANK_METRICS,
    analysed_classes,
    failure_grid,
    find_failures,
    image_name,
    rank_classes,
)
from rlr.report.figures import display_image, heatmap_grid, pick_examples, roc_curve, roc_figure
from rlr.report.tables import percent
from rlr.report.text import html_text, png_tag
from rlr.report.training import LossCurve, loss_section
from rlr.results import ClassResult

REPORT_NAME = "report.html"
COLUMNS = METRIC_NAMES + ("mAD",)
WORST_CLASSES = 2  # rows flagged; 1 when fewer than 4 classes have an mAD, none for one class
LOW_MARGIN = 0.05  # a cell more than this (5 points) below its metric's mean is flagged

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 1.5em auto; max-width: 76em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; }
code { background: #f3f3f3; padding: 0 0.25em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; }
td { text-align: right; } tbody th, tfoot th { text-align: left; }
thead th { background: #f3f3f3; }
tfoot th, tfoot td { font-weight: bold; border-top: 2px solid #444; }
tr.worst { background: #fde4e4; }
td.low { color: #b00020; font-weight: bold; }
.tag { font-size: 0.75em; color: #fff; background: #b00020; border-radius: 0.3em;
       padding: 0 0.35em; margin-left: 0.4em; }
.note { color: #555; }
img { max-width: 100%; height: auto; }
figure { margin: 1em 0 2em; } figcaption { font-size: 0.9em; color: #444; }
"""


def worst_classes(per_class: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """The lowest-mAD classes: 2, or 1 when fewer than 4 classes have an mAD (none for one)."""
    ranked = rank_classes(per_class)
    return ranked[: min(WORST_CLASSES, len(ranked) // 2)]


def _metrics_section(per_class: Mapping[str, Mapping[str, float | None]], mean: Mapping[str, float | None]) -> str:
    worst = set(worst_classes(per_class))
    head = "".join(f"<th>{html_text(c)}</th>" for c in COLUMNS)
    rows = []
    for name, row in per_class.items():
        cells = []
        for column in COLUMNS:
            value, reference = row.get(column), mean.get(column)
            low = value is not None and reference is not None and value < reference - LOW_MARGIN
            cells.append(f'<td class="low">{percent(value)}</td>' if low else f"<td>{percent(value)}</td>")
        tag = '<span class="tag">worst</span>' if name in worst else ""
        css = ' class="worst"' if name in worst else ""
        rows.append(f"<tr{css}><th>{html_text(name)}{tag}</th>{''.join(cells)}</tr>")
    mean_cells = "".join(f"<td>{percent(mean.get(c))}</td>" for c in COLUMNS)
    rule = (
        f"Values in percent, one decimal; n/a where a metric is undefined. Rows marked "
        f"<em>worst</em>: the {WORST_CLASSES} classes with the lowest mAD (1 when fewer than 4 "
        f"classes have an mAD, none with a single class). Cells in red: more than "
        f"{100 * LOW_MARGIN:.0f} points below that metric's mean."
    )
    body = "\n".join(rows)
    return (
        f'<h2>Metrics</h2>\n<table id="metrics">\n<thead><tr><th>class</th>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n"
        f"<tfoot><tr><th>mean</th>{mean_cells}</tr></tfoot>\n</table>\n"
        f'<p class="note">{rule}</p>\n'
    )


def _roc_section(results: Mapping[str, ClassResult]) -> str:
    curves, skipped = {}, []
    for name, result in results.items():
        labels = np.array([r.label for r in result.records])
        curve = roc_curve(result.scores, labels)
        if curve is None:
            skipped.append(name)
        else:
            curves[name] = (*curve, auroc(result.scores, labels))
    parts = ["<h2>Image-level ROC</h2>"]
    if curves:
        parts.append(png_tag(roc_figure(curves), "image-level ROC curves per class"))
    if skipped:
        names = ", ".join(html_text(n) for n in skipped)
        parts.append(f'<p class="note">No ROC curve (test set holds only one label): {names}.</p>')
    return "\n".join(parts) + "\n"


def _class_examples(name: str, result: ClassResult, image_size: int, resize: str, count: int) -> str:
    labels = np.array([r.label for r in result.records])
    chosen = pick_examples(result.scores, labels, count)
    if not chosen:
        return f'<h3>{html_text(name)}</h3>\n<p class="note">No test images.</p>\n'
    records = [result.records[i] for i in chosen]
    images = [display_image(r.image_path, image_size, resize) for r in records]
    titles = [
        f"{'defect' if r.label > 0 else 'normal'}: {r.defect_type[:16]}\nscore {result.scores[i]:.3g}"
        for r, i in zip(records, chosen)
    ]
    png = heatmap_grid(
        images,
        [result.masks[i] for i in chosen],
        [result.maps[i] for i in chosen],
        titles,
        vmin=float(result.maps.min()),
        vmax=float(result.maps.max()),
    )
    files = "; ".join(
        f"{k}. {html_text(Path(r.image_path).parent.name + '/' + Path(r.image_path).name)}"
        for k, r in enumerate(records, 1)
    )
    return (
        f"<h3>{html_text(name)}</h3>\n<figure>{png_tag(png, f'example heatmaps for {name}')}\n"
        f"<figcaption>{files}</figcaption></figure>\n"
    )


def _failure_items(result: ClassResult, image_size: int, resize: str) -> str:
    """One class's failure grid and, per column, its file, score, rank and the images it crosses."""
    failures = find_failures(result.scores, np.array([r.label for r in result.records]))
    total = len(result.records)
    items = []
    for case in failures.false_alarms:
        name = html_text(image_name(result.records[case.index].image_path))
        items.append(
            f"<li>normal <code>{name}</code>: score {case.score:.4g}, rank {case.rank} of {total}, "
            f"above {case.crossed} of {failures.n_defective} defective images</li>"
        )
    for case in failures.misses:
        record = result.records[case.index]
        items.append(
            f"<li>{html_text(record.defect_type)} <code>{html_text(image_name(record.image_path))}</code>: "
            f"score {case.score:.4g}, rank {case.rank} of {total}, below {case.crossed} of "
            f"{failures.n_normal} normal images</li>"
        )
    figure = png_tag(failure_grid(result, failures, image_size, resize), "false alarms and misses")
    return f"<figure>{figure}\n<figcaption><ol>{''.join(items)}</ol></figcaption></figure>\n"


def _failures_section(results: Mapping[str, ClassResult], image_size: int, resize: str) -> str:
    per_class = {name: result.metrics for name, result in results.items()}
    ranked = rank_classes(per_class)
    head = "".join(f"<th>{html_text(m)}</th>" for m in RANK_METRICS)
    rows = []
    for position, name in enumerate(ranked, 1):
        cells = "".join(f"<td>{percent(per_class[name].get(m))}</td>" for m in RANK_METRICS)
        rows.append(f"<tr><td>{position}</td><th>{html_text(name)}</th>{cells}</tr>")
    note = (
        f"Classes ranked by mAD, worst first. For the {FAILURE_CLASSES} lowest-ranked classes (every ranked "
        f"class when there are at most {FAILURE_CLASSES}): the {FAILURE_IMAGES} highest-scored normal test "
        f"images (false-alarm candidates), then the {FAILURE_IMAGES} lowest-scored defective ones (misses), "
        "with their maps on the class's colour scale. Rank 1 is the class's highest image score; a normal image "
        "above defective ones, or a defect below normal ones, is what lowers the class's I-AUROC. The same lists "
        "are in <code>failures.md</code>."
    )
    body = "\n".join(rows)
    table = f'<table id="ranking">\n<thead><tr><th>rank</th><th>class</th>{head}</tr></thead>\n<tbody>\n{body}\n'
    parts = ['<h2 id="failures">Failure analysis</h2>', f"{table}</tbody>\n</table>", f'<p class="note">{note}</p>']
    for name in analysed_classes(per_class):
        parts.append(f"<h3>{html_text(name)}</h3>\n{_failure_items(results[name], image_size, resize)}")
    return "\n".join(parts) + "\n"


def write_html_report(
    run_dir: Path,
    results: Mapping[str, ClassResult],
    mean: Mapping[str, float | None],
    protocol: Mapping[str, object],
    image_size: int,
    examples_per_class: int = 4,
    calibration: Calibration | None = None,
    losses: LossCurve | None = None,
    resize: str = "stretch",
) -> Path:
    """Write `run_dir/report.html` atomically and return its path.

    `resize` is the run's data.resize: thumbnails are placed as the model saw them, under their maps.

    `calibration` and `losses` are what the run folder adds (its thresholds, its training log):
    each gives its section; None leaves the section out (results that belong to no run).
    """
    run_dir = Path(run_dir)
    per_class = {name: result.metrics for name, result in results.items()}
    settings = "\n".join(
        f"<li><code>{html_text(str(key))}</code>: {html_text(str(value))}</li>" for key, value in protocol.items()
    )
    failures = _failures_section(results, image_size, resize)
    analysed = set(analysed_classes(per_class))
    examples = "".join(
        f'<h3>{html_text(n)}</h3>\n<p class="note">Shown under <a href="#failures">failure analysis</a>.</p>\n'
        if n in analysed
        else _class_examples(n, r, image_size, resize, examples_per_class)
        for n, r in results.items()
    )
    decisions = "" if calibration is None else decisions_section(results, calibration)
    training = "" if losses is None else loss_section(losses)
    title = f"RLR report: {run_dir.name}"
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html_text(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html_text(title)}</h1>
<p class="note">Run directory: <code>{html_text(str(run_dir.resolve()))}</code></p>
<h2>Protocol</h2>
<ul id="protocol">
{settings}
</ul>
{_metrics_section(per_class, mean)}{_roc_section(results)}{decisions}{training}{failures}<h2>Example heatmaps</h2>
<p class="note">Per class: the highest- and lowest-scored defective images and the highest-scored
normal one, then further images by score (classes analysed above show their failures there instead).
Rows: image, ground-truth mask, anomaly map over the image with the ground-truth outline in white;
one colour scale per class (its maps' min to max).</p>
{examples}</body>
</html>
"""
    path = run_dir / REPORT_NAME
    write_text(path, page)
    return path
