"""Shared by the hostile-input suites: a per-test time limit and the one-line error check."""

from __future__ import annotations

import signal
from contextlib import contextmanager
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
