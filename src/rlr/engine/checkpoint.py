"""Checkpoints: written atomically, read with `weights_only=True` so no file can run code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlr.atomic import torch_save
from rlr.config import config_differences, from_dict, load_config
from rlr.errors import CheckpointError
from rlr.models.base import Reconstructor

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


def ensure_same_config(checkpoint: Path, saved: object) -> dict[str, Any]:
    """The checkpoint's config, after checking it agrees with the run's config.yaml beside it."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{checkpoint}: holds no config")
    config_file = Path(checkpoint).parent / "config.yaml"
    if config_file.is_file():
        # Both sides with defaults filled in, so settings added after the run was trained compare equal;
        # the epoch count may grow when a run is resumed for longer.
        on_file, in_checkpoint = load_config(config_file).to_dict(), from_dict(saved).to_dict()
        differences = [d for d in config_differences(on_file, in_checkpoint) if not d.startswith("train.epochs:")]
        if differences:
            raise CheckpointError(
                f"{checkpoint}: was trained with another config than {config_file} ({'; '.join(differences)})"
            )
    return saved


def load_model_state(model: Reconstructor, state: object, checkpoint: Path) -> None:
    """Load weights saved under today's or earlier parameter names, or say which tensors do not fit."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint}: holds no model weights")
    state = model.upgrade_state_dict(state)
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k}: shape {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{checkpoint}: weights do not fit the model ({shown})")
    model.load_state_dict(state)
