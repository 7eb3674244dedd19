"""What training shows while it runs: a start banner, an early time estimate, one line per epoch.

A run of hours should say at once what it is doing (device, data, length, where it writes) and,
after a few steps, about how long it will take, so a wrong setting is caught in minutes, not at
the end. Lines go to stderr, like the step bar they are printed above (`tqdm.write` keeps the bar
whole); under torchrun only rank 0 shows them (the caller passes `enabled`).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm

from rlr.data.types import ImageRecord

#: The first time estimate comes after this many steps (after half the steps of a shorter run).
ESTIMATE_AFTER_STEPS = 5


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '2 h 05 min': as precise as a person planning the wait needs."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def banner_lines(
    device: str,
    threads: int,
    processes: int,
    class_counts: Mapping[str, int],
    epochs: int,
    first_epoch: int,
    steps_per_epoch: int,
    batch_size: int,
    run_dir: Path,
) -> list[str]:
    """The start banner: where it trains, on which images, for how long, into which folder."""
    on = f"device {device}, {threads} CPU thread{'s' if threads != 1 else ''}"
    if processes > 1:
        on += f", {processes} processes (torchrun)"
    images = sum(class_counts.values())
    classes = ", ".join(f"{name} {count}" for name, count in class_counts.items())
    length = f"{epochs} epochs x {steps_per_epoch} steps (batch {batch_size} per process)"
    if first_epoch > 1:
        length += f", continuing after epoch {first_epoch - 1}"
    return [
        f"train: {on}",
        f"train: {len(class_counts)} classes, {images} training images: {classes}",
        f"train: {length}",
        f"train: run folder {run_dir}",
    ]


def class_counts(records: Sequence[ImageRecord]) -> dict[str, int]:
    """Training images per class, in the order the classes first appear."""
    return dict(Counter(record.class_name for record in records))


def epoch_line(epoch: int, epochs: int, loss: float, seconds: float, eta: float) -> str:
    """One finished epoch: its number, mean loss, duration and the time the remaining epochs need."""
    left = f"ETA {format_duration(eta)}" if epoch < epochs else "done"
    return f"epoch {epoch}/{epochs}: loss {loss:.4f}, {seconds:.1f} s, {left}"


class TrainingProgress:
    """The step bar plus the banner, estimate and epoch lines, for one call of `train`.

    `first_epoch` > 1 when continuing a checkpoint: estimates count only the epochs still to train.
    """

    def __init__(
        self,
        epochs: int,
        first_epoch: int,
        steps_per_epoch: int,
        enabled: bool,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.epochs, self.first_epoch, self.steps_per_epoch = epochs, first_epoch, steps_per_epoch
        self.enabled = enabled
        self.clock = clock
        remaining = (epochs - first_epoch + 1) * steps_per_epoch
        self.remaining_steps = remaining
        self.estimate_at = min(ESTIMATE_AFTER_STEPS, max(1, remaining // 2)) if remaining > 1 else None
        self.steps_done = 0
        self.epoch_seconds: list[float] = []
        self.started = clock()
        self.bar = tqdm(
            total=epochs * steps_per_epoch,
            initial=(first_epoch - 1) * steps_per_epoch,
            desc="train",
            unit="step",
            disable=not enabled,
        )

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def say(self, line: str) -> None:
        """A line above the bar (stderr), from rank 0 only."""
        if self.enabled:
            tqdm.write(line, file=sys.stderr)

    def banner(self, lines: list[str]) -> None:
        for line in lines:
            self.say(line)
        self.started = self.clock()  # the estimate times the steps, not the set-up before them

    def step(self, epoch: int, loss: float) -> None:
        """After each optimizer step: the bar, and once, after the first few steps, the estimate."""
        self.bar.set_postfix(epoch=f"{epoch}/{self.epochs}", loss=f"{loss:.4f}")
        self.bar.update(1)
        self.steps_done += 1
        if self.steps_done == self.estimate_at:
            per_step = (self.clock() - self.started) / self.steps_done
            self.say(
                f"train: estimated time {format_duration(per_step * self.remaining_steps)} "
                f"(from the first {self.steps_done} steps)"
            )

    def epoch_done(self, record: Mapping[str, Any]) -> None:
        """After each epoch: its line, with an ETA from the mean epoch time so far."""
        self.epoch_seconds.append(float(record["seconds"]))
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds)
        epoch = int(record["epoch"])
        self.say(
            epoch_line(epoch, self.epochs, float(record["loss"]), self.epoch_seconds[-1], mean * (self.epochs - epoch))
        )
