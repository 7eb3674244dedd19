"""Training shows what it does: the start banner, one early time estimate, one line per epoch."""

from __future__ import annotations

import json
import re

import torch

import rlr
from rlr.engine.progress import TrainingProgress, banner_lines, format_duration
from tests.conftest import tiny_config


class _Clock:
    """A clock the test moves by hand, so estimates are checked without timing anything."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_a_person_plans_a_wait():
    assert [format_duration(s) for s in (0, 59.4, 200, 3900, 7325)] == [
        "0 s",
        "59 s",
        "3 min 20 s",
        "1 h 05 min",
        "2 h 02 min",
    ]


def test_the_estimate_comes_once_after_five_steps_and_each_epoch_gets_its_eta(capsys):
    clock = _Clock()
    with TrainingProgress(epochs=10, first_epoch=1, steps_per_epoch=10, enabled=True, clock=clock) as progress:
        clock.now += 30.0  # set-up before the banner: not part of the estimate
        progress.banner(["train: banner"])
        for _ in range(10):
            clock.now += 2.0  # 2 s a step: 100 steps take 200 s
            progress.step(1, 0.5)
        progress.epoch_done({"epoch": 1, "loss": 0.5, "seconds": 20.0})
        progress.epoch_done({"epoch": 2, "loss": 0.25, "seconds": 40.0})
    err = capsys.readouterr().err
    assert err.count("train: banner") == 1
    assert err.count("train: estimated time") == 1
    assert "train: estimated time 3 min 20 s (from the first 5 steps)" in err
    assert "epoch 1/10: loss 0.5000, 20.0 s, ETA 3 min 00 s" in err  # 9 epochs left at 20 s
    assert "epoch 2/10: loss 0.2500, 40.0 s, ETA 4 min 00 s" in err  # 8 left at the mean, 30 s


def test_a_short_run_is_estimated_after_half_its_steps(capsys):
    clock = _Clock()
    with TrainingProgress(epochs=1, first_epoch=1, steps_per_epoch=4, enabled=True, clock=clock) as progress:
        progress.banner([])
        for _ in range(4):
            clock.now += 1.0
            progress.step(1, 0.5)
    assert "train: estimated time 4 s (from the first 2 steps)" in capsys.readouterr().err


def test_other_ranks_print_nothing(capsys):
    with TrainingProgress(epochs=2, first_epoch=1, steps_per_epoch=3, enabled=False) as progress:
        progress.banner(["train: banner"])
        for _ in range(3):
            progress.step(1, 0.5)
        progress.epoch_done({"epoch": 1, "loss": 0.5, "seconds": 1.0})
    assert capsys.readouterr() == ("", "")


def test_the_banner_says_when_it_continues_and_under_torchrun(tmp_path):
    lines = banner_lines("cuda:0 (GPU)", 8, 4, {"a": 3, "b": 1}, 10, 4, 7, 16, tmp_path)
    assert lines == [
        "train: device cuda:0 (GPU), 8 CPU threads, 4 processes (torchrun)",
        "train: 2 classes, 4 training images: a 3, b 1",
        "train: 10 epochs x 7 steps (batch 16 per process), continuing after epoch 3",
        f"train: run folder {tmp_path}",
    ]


def test_a_two_epoch_run_shows_its_banner_estimate_and_epochs(tiny_demo, feature_cache_dir, tmp_path, capsys):
    run = rlr.train(tiny_config(tiny_demo, feature_cache_dir), run_dir=tmp_path / "run")  # 2 epochs, batch 8
    out, err = capsys.readouterr()
    threads = torch.get_num_threads()
    banner = [
        f"train: device cpu, {threads} CPU thread{'s' if threads != 1 else ''}",
        "train: 4 classes, 24 training images: brick 6, grass 6, gravel 6, tissue 6",
        "train: 2 epochs x 3 steps (batch 8 per process)",  # 24 images / 8
        f"train: run folder {run.path}",
    ]
    for line in banner:
        assert err.count(line) == 1, line
    assert err.count("train: estimated time") == 1 and "(from the first 3 steps)" in err
    losses = [json.loads(line)["loss"] for line in (run.path / "train_log.jsonl").read_text().splitlines()]
    epochs = re.findall(r"epoch (\d)/2: loss (\d+\.\d{4}), \d+\.\d s, (ETA [\w ]+|done)", err)
    assert [(int(e), float(loss)) for e, loss, _ in epochs] == [(1, round(losses[0], 4)), (2, round(losses[1], 4))]
    assert epochs[0][2].startswith("ETA") and epochs[1][2] == "done"
    assert "epoch 1/2" not in out and "train: device" not in out  # all on stderr, beside the step bar
