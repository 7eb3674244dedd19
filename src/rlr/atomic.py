"""Write files so that a crash never leaves a truncated file behind.

Everything is written to a temporary file in the destination folder, flushed to disk and
renamed over the target; `os.replace` is atomic on POSIX and Windows.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _read_umask() -> int:
    """The process umask (read once: setting it is the only way to read it, and not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it over `path` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write `text` (UTF-8) to `path`."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write `data` to `path`."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def torch_save(obj: object, path: str | os.PathLike) -> None:
    """Atomically `torch.save` an object (tensors, dicts, lists of plain values)."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
