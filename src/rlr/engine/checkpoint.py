"""Checkpoints: written atomically, read with `weights_only=True` so no file can run code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlr.atomic import torch_save
from rlr.errors import CheckpointError

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write a checkpoint: the previous file stays intact until the new one is complete."""
    torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely; any problem is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncation and zip errors all land here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a safe, readable checkpoint ({reason[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an rlr checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state
