"""Nothing lost: resume after SIGKILL, disk full, non-finite loss, mismatched checkpoints, reproducibility."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rlr.atomic
import rlr.engine.step as step_module
from rlr.api import evaluate
from rlr.cli import main
from rlr.engine.evaluate import load_run
from rlr.engine.train import train
from rlr.errors import CheckpointError, RlrError

from .conftest import TINY, tiny_config

EPOCHS = 3
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _config(tiny_demo, cache, *extra):
    return tiny_config(tiny_demo, cache, f"train.epochs={EPOCHS}", *extra)


def _weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference_run(tiny_demo, feature_cache_dir, tmp_path_factory):
    """An uninterrupted run: what every interrupted-and-resumed run must reproduce exactly."""
    return train(_config(tiny_demo, feature_cache_dir), tmp_path_factory.mktemp("ref") / "run")


# A child process that trains like `rlr train` but kills itself with SIGKILL at a chosen moment.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import rlr.atomic, rlr.engine.step as t
    from rlr.cli import main

    where, when = sys.argv[1], int(sys.argv[2])
    calls = {"n": 0}

    def die_after(original, counts=lambda *args: True):
        def wrapper(*args, **kwargs):
            calls["n"] += counts(*args)
            if calls["n"] == when:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapper

    def is_checkpoint(fd):
        return "/.last.pt." in os.readlink(f"/proc/self/fd/{fd}")

    if where == "step":  # the loss is computed once per level per step
        t.reconstruction_loss = die_after(t.reconstruction_loss)
    else:  # fsync runs after the bytes are written and before the rename: mid checkpoint write
        rlr.atomic.os.fsync = die_after(os.fsync, is_checkpoint)
    sys.exit(main(sys.argv[3:]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("where,when", [("step", 2 * 3 + 3), ("write", 2)])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(
    where, when, reference_run, tiny_demo, feature_cache_dir, tmp_path
):
    """Killed mid-epoch 2 ('step') or while writing epoch 2's checkpoint ('write'): resume is bit-exact."""
    run_dir = tmp_path / "run"
    argv = ["train", "--config", str(CONFIGS / "rlr_cpu.yaml"), "--run-dir", str(run_dir)]
    argv += ["--data.root", str(tiny_demo), f"--train.cache_dir={feature_cache_dir}"]
    argv += [f"--{item}" for item in (*TINY, f"train.epochs={EPOCHS}")]
    child = subprocess.run([sys.executable, "-c", CHILD, where, str(when), *argv], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1

    assert main(["train", "--resume", str(run_dir)]) == 0
    resumed, reference = _weights(run_dir), _weights(reference_run)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    log = [json.loads(line)["epoch"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    assert not list(run_dir.glob(".*.tmp"))


def test_disk_full_keeps_the_previous_checkpoint(tiny_demo, feature_cache_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync_then_full(fd):
        calls["n"] += "/.last.pt." in os.readlink(f"/proc/self/fd/{fd}")
        if calls["n"] == 2:  # epoch 1's checkpoint is written; epoch 2's hits a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(rlr.atomic.os, "fsync", fsync_then_full)
    with pytest.raises(
        RlrError, match=r"last.pt: could not write checkpoint \(No space left on device\).*epoch 1\) is intact"
    ):
        train(_config(tiny_demo, feature_cache_dir), tmp_path / "run")
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_demo, feature_cache_dir, tmp_path, monkeypatch):
    real_loss = step_module.reconstruction_loss
    calls = {"n": 0}

    def poisoned(reconstruction, target, *args):
        calls["n"] += 1
        loss = real_loss(reconstruction, target, *args)
        return loss * float("nan") if calls["n"] > 2 * 3 + 2 else loss  # epoch 2, step 2

    monkeypatch.setattr(step_module, "reconstruction_loss", poisoned)
    with pytest.raises(RlrError, match=r"non-finite loss \(nan\) at epoch 2, step 2.*last good epoch \(1\)"):
        train(_config(tiny_demo, feature_cache_dir), tmp_path / "run")
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1


def test_checkpoint_from_another_config_lists_the_differences(reference_run, tmp_path, tiny_demo, feature_cache_dir):
    other = tmp_path / "other"
    train(_config(tiny_demo, feature_cache_dir, "model.hidden_dims=[16, 32]", "train.epochs=1"), other)
    (other / "last.pt").write_bytes((reference_run / "last.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"another config .*model.hidden_dims: \[16, 32\] != \[32, 64\]"):
        load_run(other)


def test_weights_of_another_shape_are_named(reference_run, tmp_path):
    state = torch.load(reference_run / "last.pt", weights_only=True)
    state["model"]["levels.0.reference"] = torch.zeros(3, 3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(state, run_dir / "last.pt")
    (run_dir / "config.yaml").write_bytes((reference_run / "config.yaml").read_bytes())
    with pytest.raises(CheckpointError, match=r"levels.0.reference: shape \(3, 3\) != \(256, 40\)"):
        load_run(run_dir)


@pytest.mark.slow
def test_same_seed_same_metrics_and_recorded_provenance(reference_run, tiny_demo, feature_cache_dir, tmp_path):
    again = train(_config(tiny_demo, feature_cache_dir), tmp_path / "again")
    evaluate(reference_run)
    evaluate(again)
    first = json.loads((reference_run / "metrics.json").read_text())
    second = json.loads((again / "metrics.json").read_text())
    assert first["per_class"] == second["per_class"]
    info = json.loads((again / "run_info.json").read_text())
    assert info["seed"] == 0 and info["versions"]["torch"] == torch.__version__
    assert info["data_fingerprint"] == json.loads((reference_run / "run_info.json").read_text())["data_fingerprint"]
    assert info["config"]["train"]["epochs"] == EPOCHS


def test_resume_refuses_other_options(reference_run, capsys):
    assert main(["train", "--resume", str(reference_run), "--model.num_layers", "3"]) == 2
    assert "only --train.epochs" in capsys.readouterr().err
