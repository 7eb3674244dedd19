"""Where rlr keeps what it can rebuild (feature caches, the demo data), and whether an output folder can be written."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from rlr.errors import OutputError

_PROBE_PREFIX = ".rlr-write-check."  # ends in .tmp, like atomic's temp files, so resume sweeps up a leftover


def cache_root() -> Path:
    """`$RLR_CACHE_DIR` when set (CI, shared machines), else `~/.cache/rlr`."""
    base = os.environ.get("RLR_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "rlr"


def check_output_dir(folder: str | os.PathLike, option: str) -> None:
    """Refuse, in one line naming `option` and the folder, an output folder nothing can be written into.

    Called before a command loads a model or trains, so a file in the way, a place that takes no
    new files (/proc, /sys, a read-only mount) or a missing permission costs no work. The test is
    the real thing: a temporary file is made in the folder (or, when it does not exist yet, a
    temporary folder in its nearest existing parent) and removed at once.
    """
    target = Path(folder)
    nearest = target
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        problem = "is a file, not a folder" if nearest.is_file() else "is not a folder (a pipe, socket or device)"
        where = "" if nearest == target else f"{nearest} "
        cause = NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(nearest))
        raise OutputError(f"{option} {target}: {where}{problem}", cause)
    try:
        if nearest == target:
            handle, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, suffix=".tmp", dir=target)
            os.close(handle)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=_PROBE_PREFIX, suffix=".tmp", dir=nearest))
    except OSError as error:
        where = "cannot write files there" if nearest == target else f"cannot create folders in {nearest}"
        raise OutputError(f"{option} {target}: {where} ({error.strerror or error})", error) from None
