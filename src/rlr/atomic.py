"""Write files so that a crash never leaves a truncated file behind.

Everything is written to a temporary file in the destination folder, flushed to disk and
renamed over the target; `os.replace` is atomic on POSIX and Windows. A write that fails (disk
full, no permission) removes its temporary file, leaves the previous file as it was and raises
one `OutputError` line naming the target.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from rlr.errors import OutputError

# Room the temporary name keeps of the target's name: with ".", ".", mkstemp's 8 random
# characters and ".tmp" it stays far below the 255-byte limit of common file systems.
_NAME_BYTES = 64


def _read_umask() -> int:
    """The process umask (read once: setting it is the only way to read it, and not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _temp_prefix(name: str) -> str:
    """`.<name>.`, the name cut to `_NAME_BYTES` bytes on disk, so any target's temp name is valid."""
    while len(os.fsencode(name)) > _NAME_BYTES:
        name = name[:-1]
    return f".{name}."


def _failure(target: Path, error: OSError) -> OutputError:
    """One line naming the target, why the write failed and what was kept."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        try:
            reason += f", {shutil.disk_usage(target.parent).free / 1e6:.1f} MB free there"
        except OSError:
            pass
    kept = "the previous file is intact" if os.path.lexists(target) else "nothing was written"
    return OutputError(f"{target}: could not write ({reason}); {kept}", error)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it over `path` on success.

    Text mode writes UTF-8 with surrogate escapes: a file name that is not valid UTF-8 (a str
    holding lone surrogates, as os.fsdecode gives it) is written as its bytes on disk, losslessly.
    """
    target = Path(path)
    tmp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent)
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        text = {} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape"}
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as error:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise _failure(target, error) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write `text` (UTF-8, surrogate escapes kept as bytes) to `path`."""
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
