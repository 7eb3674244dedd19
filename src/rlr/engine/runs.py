"""A run folder's training state: where it lives, refusing to overwrite it, resuming it, saving each epoch.

`last.pt` holds everything needed to continue exactly (model, optimizer, both random
generators, the epoch history); it is replaced atomically after every epoch.

Overwriting a finished run is all or nothing: the new run is trained in a hidden sibling,
`.<name>.overwrite`, and swapped in only once it holds its first complete checkpoint, so a
failed or killed attempt leaves the old run as it was, loadable. The next attempt (or resume)
removes a leftover sibling and finishes, or undoes, a swap that was cut short.
"""

from __future__ import annotations

import json
import os
import shutil
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
from rlr.errors import CheckpointError, OutputError, RlrError, one_line

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "train_log.jsonl"


def run_dir_for(config: RunConfig) -> Path:
    return Path(config.output_dir) / config.name


def _sibling(run_dir: Path, role: str) -> Path:
    """The hidden folder beside the run that an overwrite uses: 'overwrite' (the new run), 'replaced' (the old)."""
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.with_name(f".{run_dir.name}.{role}")


def _recover(run_dir: Path) -> None:
    """Clear what a killed overwrite left: a half-trained new run is dropped; an old run moved aside goes back."""
    replaced, staged = _sibling(run_dir, "replaced"), _sibling(run_dir, "overwrite")
    try:
        if replaced.exists():
            if run_dir.exists():  # the swap finished; only deleting the old run was cut short
                shutil.rmtree(replaced)
            else:  # cut between its two renames: the old run is whole, put it back
                os.replace(replaced, run_dir)
        if staged.exists():
            shutil.rmtree(staged)
    except OSError as error:
        raise OutputError(
            f"{run_dir}: could not clear an earlier --overwrite ({error.strerror or error})", error
        ) from None


def prepare_run_dir(run_dir: Path, overwrite: bool) -> Path:
    """Refuse to train over an earlier run's results unless told to; returns the folder to write into.

    That is `run_dir` itself, or, when `overwrite` replaces a trained run, its staging sibling,
    which `replace_run` swaps in after the first checkpoint.
    """
    if is_main_process():
        _recover(run_dir)
    replacing = (run_dir / CHECKPOINT_NAME).exists()
    if replacing and not overwrite:
        raise RlrError(
            f"{run_dir}: already holds a trained run; continue it with --resume, "
            "or choose another name/output_dir, or pass --overwrite"
        )
    folder = _sibling(run_dir, "overwrite") if replacing else run_dir
    try:
        if is_main_process():
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{folder}: could not create the run folder ({error.strerror or error})", error) from None
    return folder


def replace_run(folder: Path, run_dir: Path) -> Path:
    """Swap a staged run, now holding a complete checkpoint, in for the old one, which is deleted; returns `run_dir`.

    A no-op when training wrote into `run_dir` itself (or the swap is done): call it after every save.
    """
    if folder == run_dir or not is_main_process():
        return run_dir
    replaced = _sibling(run_dir, "replaced")
    try:
        os.replace(run_dir, replaced)
        os.replace(folder, run_dir)
    except OSError as error:
        _recover(run_dir)  # the old run back in its place
        raise OutputError(f"{run_dir}: could not swap in the new run ({error.strerror or error})", error) from None
    shutil.rmtree(replaced, ignore_errors=True)  # what stays is removed by the next prepare or resume
    return run_dir


def discard_staged(run_dir: Path) -> None:
    """Drop the staged run of an overwrite that failed before its swap; the old run is untouched."""
    shutil.rmtree(_sibling(run_dir, "overwrite"), ignore_errors=True)


def resume_state(run_dir: Path, epochs: int | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """The run's config (optionally with more epochs) and its last complete checkpoint."""
    if is_main_process():
        _recover(run_dir)
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
