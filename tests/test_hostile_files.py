"""Hostile inputs, round two (issue 16), in what a run writes and reads back: temp names, full disks,
file names that are not UTF-8, tampered checkpoints.

Every test runs under a time limit (tests/hostile.py).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import rlr.atomic
from rlr.atomic import atomic_open, write_bytes, write_text
from rlr.cli import main
from rlr.data.types import ImageRecord
from rlr.engine.provenance import data_fingerprint
from rlr.errors import OutputError
from tests.hostile import time_limit  # noqa: F401  (time_limit: autouse)

raw_names = pytest.mark.skipif(
    sys.platform != "linux" or sys.getfilesystemencoding() != "utf-8",
    reason="needs a file system that stores names as raw bytes",
)
CLASS = os.fsdecode(b"p\xe9n")  # Latin-1 'pen': not UTF-8
TINY = [
    "--data.image_size",
    "64",
    "--model.hidden_dims",
    "[8, 8]",
    "--model.num_layers",
    "1",
    "--model.num_heads",
    "1",
    "--model.windows",
    "[3, 1]",
    "--train.epochs",
    "1",
    "--train.batch_size",
    "2",
]


def _full(*_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- case 5: temp names fit whatever the target's name ----------------------------------------


@pytest.mark.parametrize("name", ["x" * 240 + ".csv", "\u00e9" * 125 + ".png"], ids=["240-ascii", "254-bytes"])
def test_temp_name_fits_the_name_limit(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    fsync = os.fsync
    monkeypatch.setattr(rlr.atomic.os, "fsync", lambda fd: (seen.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd)))
    write_text(tmp_path / name, "a,b\n")
    assert (tmp_path / name).read_text() == "a,b\n"
    (temp,) = [Path(p).name for p in seen]
    assert len(os.fsencode(temp)) <= 255 and temp.startswith(".") and temp.endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == [name]


# --- case 6: disk full ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_is_one_line_and_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    target = tmp_path / "metrics.json"
    write_text(target, "earlier results")
    if where == "fsync":
        monkeypatch.setattr(rlr.atomic.os, "fsync", _full)

    def write() -> None:
        if where == "fsync":
            write_bytes(target, b"new results")
            return
        with atomic_open(target, "wb") as handle:
            handle.write(b"new res")
            _full()

    with pytest.raises(OutputError) as caught:
        write()
    message = str(caught.value)
    assert message.startswith(f"{target}: could not write (No space left on device, ") and "\n" not in message
    assert message.endswith("MB free there); the previous file is intact")
    assert caught.value.errno == errno.ENOSPC  # still an OSError to code that handles failed writes
    assert target.read_text() == "earlier results"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_disk_full_on_a_fresh_train_writing_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = _tree(tmp_path / "data", "pen", "0.png")
    monkeypatch.setattr(rlr.atomic.os, "fsync", _full)
    run_dir = tmp_path / "run"
    assert main(["train", "--data.root", str(root), "--run-dir", str(run_dir), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rlr: error: {run_dir / 'config.yaml'}: could not write (No space left on device")
    assert err.endswith("; nothing was written\n") and err.count("\n") == 1
    assert list(run_dir.iterdir()) == []


# --- case 4: file names that are not UTF-8 ----------------------------------------------------


def _tree(root: Path, name: str, image: str) -> Path:
    """One class `name` in MVTec layout with 64 px noise images, every file called like `image`."""
    rng = np.random.default_rng(0)
    for folder, count in (("train/good", 3), ("test/good", 1), ("test/hole", 1)):
        (root / name / folder).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / folder / f"{i}{image}")
    (root / name / "ground_truth/hole").mkdir(parents=True)
    Image.new("L", (64, 64), 255).save(root / name / "ground_truth/hole" / f"0{Path(image).stem}_mask.png")
    return root


@raw_names
def test_fingerprint_and_text_of_undecodable_names_are_lossless(tmp_path: Path) -> None:
    image = tmp_path / os.fsdecode(b"0\xff.png")
    image.write_bytes(b"content")
    fingerprint = data_fingerprint([ImageRecord(image, CLASS, 0)])
    assert fingerprint != data_fingerprint([ImageRecord(image, os.fsdecode(b"p\xe8n"), 0)])
    write_text(tmp_path / "scores.csv", f"{image.name},0.5\n")
    assert (tmp_path / "scores.csv").read_bytes() == b"0\xff.png,0.5\n"  # the name's own bytes


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run trained on a class and files whose names are not UTF-8 (skipped where names are text)."""
    if sys.platform != "linux" or sys.getfilesystemencoding() != "utf-8":
        pytest.skip("needs a file system that stores names as raw bytes")
    base = tmp_path_factory.mktemp("hostile_run")
    root = _tree(base / "data", CLASS, os.fsdecode(b"\xff.png"))
    run_dir = base / "run"
    argv = ["train", "--data.root", str(root), "--run-dir", str(run_dir), "--train.cache_dir", str(base / "cache")]
    assert main([*argv, *TINY]) == 0
    return run_dir


@pytest.mark.slow
def test_train_writes_provenance_for_undecodable_names(trained: Path) -> None:
    info = (trained / "run_info.json").read_text(encoding="utf-8")
    assert '"data_fingerprint"' in info and (trained / "last.pt").is_file()


# --- case 10: tampered checkpoints ------------------------------------------------------------


def _tampered(trained: Path, tmp_path: Path, change: Callable[[dict], None]) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    state = torch.load(run_dir / "last.pt", weights_only=True)
    change(state)
    torch.save(state, run_dir / "last.pt")
    return run_dir


def _first_moment(state: dict) -> None:
    moments = state["optimizer"]["state"][0]
    moments["exp_avg"] = torch.zeros(7, 7)


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, problem",
    [
        (_first_moment, "optimizer exp_avg of parameter 0: shape (7, 7) != "),
        (lambda s: s["rng"].update(torch="abc"), "rng is not the saved generator states"),
        (lambda s: s["rng"].update(order=torch.zeros(3)), "rng is not the saved generator states"),
        (lambda s: s.update(history=7), "history is not a list of per-epoch records"),
        (lambda s: s.update(history=[{"epoch": [1]}]), "history is not a list of per-epoch records"),
        (lambda s: s.update(epoch="1"), "epoch is '1', not a count of epochs"),
        (lambda s: s.update(epoch=1.0), "epoch is 1.0, not a count of epochs"),
        (lambda s: s.pop("optimizer"), "missing optimizer"),
        (lambda s: s["model_spec"].update(channels="40"), "model_spec is not the saved map shapes"),
    ],
    ids=[
        "optimizer-shape",
        "rng-type",
        "order-type",
        "history-int",
        "history-record",
        "epoch-str",
        "epoch-float",
        "no-optimizer",
        "spec",
    ],
)
def test_tampered_checkpoint_is_refused_on_resume(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture, change: Callable[[dict], None], problem: str
) -> None:
    run_dir = _tampered(trained, tmp_path, change)
    before = (run_dir / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run_dir), "--train.epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rlr: error: {run_dir / 'last.pt'}: damaged or tampered checkpoint (") and problem in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (run_dir / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_nan_weights_are_refused_by_rlr_test(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def poison(state: dict) -> None:
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name].view(-1)[0] = float("nan")

    run_dir = _tampered(trained, tmp_path, poison)
    assert main(["test", "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rlr: error: {run_dir / 'last.pt'}: damaged or tampered checkpoint (model weights ")
    assert err.endswith(" hold NaN or infinite values)\n")


@pytest.mark.slow
def test_checkpoint_without_its_config_is_refused(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = _tampered(trained, tmp_path, lambda s: None)
    (run_dir / "config.yaml").unlink()
    for argv in (["test", "--run", str(run_dir)], ["train", "--resume", str(run_dir)]):
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            f"rlr: error: {run_dir / 'last.pt'}: no config.yaml beside it, so this is not a complete run folder\n"
        )


@pytest.mark.slow
@pytest.mark.parametrize("value", ["abc", "1.5", ".inf", "[2"])
def test_resume_with_more_epochs_of_the_wrong_type(trained: Path, capsys: pytest.CaptureFixture, value: str) -> None:
    before = (trained / "last.pt").read_bytes()
    assert main(["train", "--resume", str(trained), "--train.epochs", value]) == 2
    assert capsys.readouterr().err.startswith("rlr: error: train.epochs must be a whole number, got ")
    assert (trained / "last.pt").read_bytes() == before


# --- case 1, at test time: a pipe among the test images ---------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_pipe_in_test_good_stops_rlr_test(trained: Path, capsys: pytest.CaptureFixture) -> None:
    from rlr.config import load_config

    pipe = Path(load_config(trained / "config.yaml").data.root) / CLASS / "test" / "good" / "9.png"
    os.mkfifo(pipe)
    try:
        assert main(["test", "--run", str(trained)]) == 2
    finally:
        pipe.unlink()
    err = capsys.readouterr().err
    shown = str(pipe).encode("utf-8", "backslashreplace").decode("ascii")  # as the CLI prints such names
    assert err == f"rlr: error: {shown}: not a regular file (a pipe, socket or device)\n"
    assert not (trained / "metrics.json").exists()
