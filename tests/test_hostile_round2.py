"""Hostile inputs, round two (issue #16), the remaining cases: link loops in predict's inputs (2),
output folders that cannot be written (7), a failed `train --overwrite` (14), an 8000 x 8000 image
(17) and clients that hang up mid-request (18).

Every test runs under a time limit (tests/hostile.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from rlr.cli import main
from rlr.deploy.api import Limits
from rlr.deploy.model import Model
from rlr.engine.train import train
from rlr.errors import RlrError
from rlr.paths import check_output_dir
from tests.hostile import (
    no_hang,
    post,
    serving,
    time_limit,  # noqa: F401  (time_limit: autouse)
    zero_png,
)

from .conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tiny_demo: Path, feature_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch tiny run; tests that change it work on a copy."""
    return train(tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1"), tmp_path_factory.mktemp("runs") / "tiny")


def _scored_paths(out: Path) -> list[str]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        return [row["path"] for row in csv.DictReader(handle)]


# --- case 2: link loops in predict's folders and `**` patterns ---------------------------------


@pytest.mark.parametrize("links", [("sub/up",), ("self",), ("sub/up", "self")], ids=["up", "self", "both"])
def test_predict_through_link_loops_ends_and_scores_each_image_once(
    run_dir: Path, tiny_demo: Path, tmp_path: Path, links: tuple[str, ...]
) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    good = sorted((tiny_demo / "brick" / "test" / "good").glob("*.png"))
    shutil.copy(good[0], images / "a.png")
    shutil.copy(good[1], images / "sub" / "b.png")
    for link in links:
        (images / link).symlink_to(".." if link.endswith("up") else ".")
    out = tmp_path / "out"
    with no_hang(60):  # glob.glob followed each link until 40 links deep: with both, 2**40 paths
        code = main(["predict", str(run_dir), f"{images}/**/*.png", str(images), "--out", str(out), "--no-overlays"])
    assert code == 0
    assert sorted(_scored_paths(out)) == [str(images / "a.png"), str(images / "sub" / "b.png")]


# --- case 7: output folders that cannot be written, refused before any work --------------------

_ON_LINUX = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc and /sys")


def _unwritable(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """(an output folder of this kind, the problem its one line names)."""
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    if kind == "file":
        return taken, "is a file, not a folder"
    if kind == "below-a-file":
        return taken / "out", f"{taken} is a file, not a folder"
    if kind == "proc-folder":
        return Path("/proc/self"), "cannot write files there (No such file or directory)"
    if kind == "under-proc":
        return Path("/proc/rlr-out"), "cannot create folders in /proc (No such file or directory)"
    if kind == "under-sys":  # sysfs takes no new folders, even from root
        reason = "Operation not permitted" if os.geteuid() == 0 else "Permission denied"
        return Path("/sys/rlr-out"), f"cannot create folders in /sys ({reason})"
    if os.geteuid() == 0:
        pytest.skip("root may write into a folder without write permission (/proc and /sys cases cover it)")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return locked, "cannot write files there (Permission denied)"


def _no_work(*_: object, **__: object) -> None:
    raise AssertionError("the command started its work before checking its output folder")


@_ON_LINUX
@pytest.mark.parametrize("kind", ["file", "below-a-file", "proc-folder", "under-proc", "under-sys", "no-permission"])
@pytest.mark.parametrize("command", ["predict", "export", "train"])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_work(
    command: str, kind: str, run_dir: Path, tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    target, problem = _unwritable(kind, tmp_path)
    monkeypatch.setattr("rlr.deploy.model.Model.load", _no_work)
    monkeypatch.setattr("rlr.engine.train.train", _no_work)
    argv = {
        "predict": ["predict", str(run_dir), str(tiny_demo), "--out", str(target)],
        "export": ["export", str(run_dir), "--out", str(target)],
        "train": ["train", "--data.root", str(tiny_demo), "--run-dir", str(target)],
    }[command]
    option = "--run-dir" if command == "train" else "--out"
    assert main(argv) == 2
    assert capsys.readouterr().err == f"rlr: error: {option} {target}: {problem}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.txt"]  # the probe left nothing behind


def test_a_writable_output_folder_passes_and_keeps_nothing_of_the_check(tmp_path: Path) -> None:
    check_output_dir(tmp_path, "--out")  # exists
    check_output_dir(tmp_path / "new" / "deeper", "--out")  # made later by the command
    assert list(tmp_path.iterdir()) == []


# --- case 14: `train --overwrite` is all or nothing ----------------------------------------------


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _injected(*_: object) -> None:
    raise RlrError("injected failure in the first epoch")


@pytest.fixture(scope="module")
def tested_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the finished tiny run, tested (so it holds metrics and a report too)."""
    copy = tmp_path_factory.mktemp("tested") / "tiny"
    shutil.copytree(run_dir, copy)
    assert main(["test", str(copy)]) == 0
    return copy


@pytest.fixture
def old_run(tested_run: Path, tmp_path: Path) -> Path:
    """A copy of the tested run, alone in its folder."""
    return Path(shutil.copytree(tested_run, tmp_path / "runs" / "tiny"))


def _retrain(tiny_demo: Path, feature_cache_dir: Path, run: Path) -> Path:
    """Train over `run` with another seed (so its config.yaml differs), with --overwrite."""
    return train(tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1", "train.seed=1"), run, overwrite=True)


@pytest.mark.parametrize("left_over", ["nothing", "staged-run", "swap-cut-short"])
def test_a_failed_overwrite_leaves_the_old_run_intact_and_loadable(
    old_run: Path, tiny_demo: Path, feature_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, left_over: str, capsys
) -> None:
    before = _contents(old_run)
    if left_over == "staged-run":  # a killed attempt's half-trained run: never mistaken for the run
        staged = old_run.with_name(".tiny.overwrite")
        shutil.copytree(old_run, staged)
        (staged / "last.pt").write_bytes(b"half a checkpoint")
    if left_over == "swap-cut-short":  # killed between the swap's two renames: the old run is moved aside
        old_run.rename(old_run.with_name(".tiny.replaced"))
    monkeypatch.setattr("rlr.engine.train._train_epoch", _injected)
    with pytest.raises(RlrError, match="injected failure"):
        _retrain(tiny_demo, feature_cache_dir, old_run)
    assert _contents(old_run) == before
    assert [p.name for p in old_run.parent.iterdir()] == ["tiny"]  # no staging folder left behind
    if left_over == "nothing":
        capsys.readouterr()
        assert main(["test", str(old_run)]) == 0, capsys.readouterr().err
    else:  # loading checks the same: the checkpoint is whole and fits config.yaml
        assert Model.load(old_run, "cpu").checkpoint_digest == hashlib.sha256(before["last.pt"]).hexdigest()


def test_a_successful_overwrite_replaces_the_old_run_fully(
    old_run: Path, tiny_demo: Path, feature_cache_dir: Path
) -> None:
    (old_run / "notes.txt").write_text("the old run's")
    before = _contents(old_run)
    _retrain(tiny_demo, feature_cache_dir, old_run)
    after = _contents(old_run)
    assert sorted(after) == ["config.yaml", "last.pt", "run_info.json", "train_log.jsonl"]  # no metrics, no notes
    assert after["last.pt"] != before["last.pt"] and b"seed: 1" in after["config.yaml"]
    assert [p.name for p in old_run.parent.iterdir()] == ["tiny"]
    assert main(["test", str(old_run)]) == 0


# --- the HTTP API: `rlr serve` in its own process, as a user runs it ----------------------------


@pytest.fixture(scope="module")
def served(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, stderr file) of `rlr serve RUN` on 127.0.0.1 and a free port, default limits."""
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with serving(run_dir, log) as (url, _):
        yield url, log


def _log_since(log: Path, offset: int) -> str:
    """What the server wrote to stderr after `offset` bytes."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


# --- case 17: an 8000 x 8000 image -------------------------------------------------------------


# Peak RSS from /proc (VmHWM, kB): getrusage's ru_maxrss would carry over the parent's peak across exec.
_DECODE_IN_A_FRESH_PROCESS = """
import re, sys
from rlr.deploy.image_bytes import decode_image
from rlr.errors import DataError
def peak():
    return int(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1))
data = open(sys.argv[1], "rb").read()
before = peak()
try:
    decode_image(data, "big.png", int(sys.argv[2]))
    print("decoded")
except DataError as error:
    print(error)
print(peak() - before)
"""


_DECODED_MIB = 8000 * 8000 * 3 / 2**20  # what the decoded pixels alone take, 183 MiB


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zero_png(tmp_path_factory.mktemp("big") / "big.png", 8000)


def _decode_in_a_fresh_process(png: Path, max_pixels: int) -> tuple[str, float]:
    """(decode_image's outcome, the growth of the process's peak RSS in MiB) for the upload path."""
    command = [sys.executable, "-c", _DECODE_IN_A_FRESH_PROCESS, str(png), str(max_pixels)]
    message, growth_kb = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.splitlines()
    return message, int(growth_kb) / 1024


@_ON_LINUX
def test_an_8000_px_upload_is_refused_before_decoding_with_bounded_memory(big_png: Path) -> None:
    assert big_png.stat().st_size < 1 << 20  # a small upload, well within the 20 MB limit
    message, growth_mib = _decode_in_a_fresh_process(big_png, Limits().max_pixels)  # rlr serve's default
    assert message == "big.png: image too large (8000 x 8000 = 64000000 pixels > 32000000)"
    assert growth_mib < _DECODED_MIB / 20


@_ON_LINUX
def test_the_memory_measure_sees_a_full_decode(big_png: Path) -> None:
    # the check above could pass by measuring nothing: with the limit raised, the same measure sees the decode
    message, growth_mib = _decode_in_a_fresh_process(big_png, 10**8)
    assert message == "decoded" and growth_mib > _DECODED_MIB


def test_an_8000_px_upload_gets_one_line_from_the_server(served: tuple[str, Path], big_png: Path) -> None:
    url, log = served
    logged = log.stat().st_size
    status, answer = post(url, big_png.read_bytes(), {"X-Filename": "big.png"})
    assert (status, answer) == (400, {"error": "big.png: image too large (8000 x 8000 = 64000000 pixels > 32000000)"})
    assert _log_since(log, logged) == ""


# --- case 18: clients that hang up mid-request -------------------------------------------------


def _request_bytes(body: bytes) -> bytes:
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filename: a.png\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("sent", ["half-headers", "half-body", "whole-request"])
def test_a_client_hanging_up_mid_request_leaves_the_server_answering(
    served: tuple[str, Path], tiny_demo: Path, sent: str, reset: bool
) -> None:
    url, log = served
    logged = log.stat().st_size
    image = next((tiny_demo / "brick" / "test" / "good").glob("*.png")).read_bytes()
    whole = _request_bytes(image)
    payload = {"half-headers": whole[:40], "half-body": whole[: len(whole) - len(image) // 2], "whole-request": whole}
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    with socket.create_connection((host, port), timeout=10) as client:
        if reset:  # close with a TCP reset instead of an orderly shutdown
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.sendall(payload[sent])
    # the next request is scored after the abandoned one (one scoring worker), so its answer comes after any
    # attempt to answer the client that left
    status, answer = post(url, image, {"X-Filename": "a.png"})
    assert status == 200 and len(answer["results"]) == 1
    with urllib.request.urlopen(url + "health", timeout=30) as response:
        assert json.loads(response.read())["status"] == "ok"
    assert "Traceback" not in _log_since(log, logged)
