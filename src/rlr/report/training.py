"""The report's training loss curve, from the run's train_log.jsonl.

The log is the JSON the run writes beside last.pt after every epoch (one record per epoch, the
checkpoint's history), so the report reads plain JSON and never unpickles anything. A missing or
damaged log is said in the section, one line naming the file and the line; it never stops `rlr test`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rlr.engine.runs import LOG_NAME
from rlr.report.figures import DPI, _png
from rlr.report.text import html_text, plot_text, png_tag


@dataclass(frozen=True)
class LossCurve:
    """Per-epoch mean training loss, or the problem that kept it from being read."""

    epochs: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    problem: str | None = None


def read_loss_curve(run_dir: Path) -> LossCurve:
    """The epochs and losses of `run_dir/train_log.jsonl`."""
    path = Path(run_dir) / LOG_NAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return LossCurve(problem=f"{path}: not found (a report written outside its run folder has no training log)")
    except (OSError, UnicodeDecodeError) as error:
        return LossCurve(problem=f"{path}: not readable ({error})")
    epochs, losses = [], []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            epoch, loss = record["epoch"], record["loss"]
            if not isinstance(epoch, int) or isinstance(loss, bool) or not isinstance(loss, (int, float)):
                raise TypeError(f"epoch {epoch!r}, loss {loss!r}")
        except (ValueError, KeyError, TypeError) as error:
            return LossCurve(problem=f"{path}: line {number} is not an epoch record ({type(error).__name__}: {error})")
        epochs.append(epoch)
        losses.append(float(loss))
    if not epochs:
        return LossCurve(problem=f"{path}: holds no epoch yet")
    return LossCurve(epochs, losses)


def loss_figure(curve: LossCurve) -> bytes:
    """Mean training loss per epoch; a log-scale axis when the loss falls over more than a factor of 20."""
    fig = Figure(figsize=(6.0, 3.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(curve.epochs, curve.losses, marker="o", markersize=3, linewidth=1.4)
    finite = [v for v in curve.losses if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 20 * min(finite):
        ax.set_yscale("log")
    ax.set(xlabel=plot_text("epoch"), ylabel=plot_text("mean training loss"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(plot_text("Training loss per epoch"), fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def loss_section(curve: LossCurve) -> str:
    """The report's section: the curve, or the one line on why there is none."""
    parts = ['<h2 id="training">Training loss</h2>']
    if curve.problem is not None:
        parts.append(f'<p class="note">No loss curve: {html_text(curve.problem)}.</p>')
    else:
        parts.append(png_tag(loss_figure(curve), "training loss per epoch"))
        parts.append(
            f'<p class="note">{len(curve.epochs)} epochs; last loss {curve.losses[-1]:.6g} '
            f"(the mean over the epoch's batches, as in <code>{LOG_NAME}</code>).</p>"
        )
    return "\n".join(parts) + "\n"
