"""Where rlr keeps what it can rebuild (feature caches, the demo data): one root for all of it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$RLR_CACHE_DIR` when set (CI, shared machines), else `~/.cache/rlr`."""
    base = os.environ.get("RLR_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "rlr"
