"""Shared by the hostile-input suites: a per-test time limit, the one-line error check, and
`rlr serve` in its own process with what its clients need (large PNGs made on the fly, POST)."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def no_hang(seconds: int = 20) -> Iterator[None]:
    """Fail, rather than hang the suite, where a walk recurses or a read blocks (SIGALRM, POSIX)."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """Every test of a module that imports this ends within 120 s (autouse there)."""
    with no_hang(120):
        yield


def one_line(message: str, prefix: object) -> bool:
    """One printable line that starts with `prefix` (the path or key it is about), as the CLI shows it."""
    message.encode("utf-8", "backslashreplace")
    return "\n" not in message and message.startswith(str(prefix))


@contextmanager
def serving(run_dir: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """(base URL, process) of `rlr serve RUN` on 127.0.0.1 and a free port, default limits, stderr to `log`,
    `env` added to the environment; stopped with Ctrl-C (SIGINT) at the end, as a user stops it."""
    command = [sys.executable, "-m", "rlr", "serve", str(run_dir), "--port", "0", "--device", "cpu"]
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, **(env or {})}
        )
    try:
        with no_hang(120):
            started = process.stdout.readline()  # "rlr serve: run 'tiny' at http://127.0.0.1:PORT/ (page), ..."
        found = re.search(r" at (http://\S+/) ", started)
        assert found, f"rlr serve did not start: {started!r} {log.read_text()}"
        yield found.group(1), process
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def post(url: str, body: bytes, headers: dict[str, str], query: str = "") -> tuple[int, dict]:
    """(status, JSON answer) of POST /predict`query` with `body`; refusals are answers too, not exceptions."""
    call = urllib.request.Request(url + "predict" + query, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def zero_png(path: Path, side: int) -> Path:
    """An all-black RGB PNG of side x side pixels, written row by row (never held decoded in memory)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    squeeze, row = zlib.compressobj(9), bytes(1 + 3 * side)  # each row: filter byte 0, then its pixels
    pixels = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path
