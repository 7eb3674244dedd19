"""A run folder's training state: where it lives, refusing to overwrite it, resuming it, saving each epoch.

`last.pt` holds everything needed to continue exactly (model, optimizer, both random
generators, the epoch history); it is replaced atomically after every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlr.atomic import write_text
from rlr.config import RunConfig, from_dict
from rlr.engine.checkpoint import (
    check_optimizer_state,
    ensure_same_config,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from rlr.engine.distributed import is_main_process
from rlr.errors import CheckpointError, RlrError, one_line

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "train_log.jsonl"


def run_dir_for(config: RunConfig) -> Path:
    return Path(config.output_dir) / config.name


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to train over an earlier run's results unless told to."""
    if (run_dir / CHECKPOINT_NAME).exists() and not overwrite:
        raise RlrError(
            f"{run_dir}: already holds a trained run; continue it with --resume, "
            "or choose another name/output_dir, or pass --overwrite"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def resume_state(run_dir: Path, epochs: int | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """The run's config (optionally with more epochs) and its last complete checkpoint."""
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    saved = ensure_same_config(run_dir / CHECKPOINT_NAME, state.get("config"))
    if epochs is not None:
        saved = {**saved, "train": {**saved["train"], "epochs": epochs}}
    if is_main_process():  # the one writer cleans up; under torchrun the others would race it
        for stale in run_dir.glob(".*.tmp"):  # left by a process killed while writing
            stale.unlink()
    return from_dict(saved), state


def restore(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Path, device: torch.device
) -> None:
    """Put a checkpoint's weights, optimizer state and global random state back; a misfit is one line."""
    load_model_state(model, state.get("model"), path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        check_optimizer_state(optimizer, path)
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], device)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: does not fit this model ({one_line(exc)})") from None


def save_epoch(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint, then the log; a failed write names the file and keeps the old one."""
    path = run_dir / CHECKPOINT_NAME
    try:
        save_checkpoint(path, state)
        lines = "".join(json.dumps(record) + "\n" for record in state["history"])
        write_text(run_dir / LOG_NAME, lines)
    except OSError as exc:
        raise RlrError(
            f"{path}: could not write checkpoint ({exc.strerror or exc}); "
            f"the previous checkpoint (epoch {state['epoch'] - 1}) is intact"
        ) from None
