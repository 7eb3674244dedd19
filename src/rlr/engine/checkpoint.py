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
    if problem := structure_problem(state):
        raise CheckpointError(f"{path}: damaged or tampered checkpoint ({problem})")
    return state


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_bytes_state(value: object) -> bool:
    """A random generator's state: a flat uint8 tensor."""
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def structure_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the fields `save_checkpoint` writes (types, shapes, finite weights), or None.

    Checked on every load, so a damaged or tampered field is one line before any work, not a
    traceback mid-run; whether the weights fit the model is `load_model_state`'s check.
    """
    missing = [k for k in ("epoch", "model", "optimizer", "rng", "history", "config", "model_spec") if k not in state]
    if missing:
        return f"missing {', '.join(missing)}"
    if not _is_int(state["epoch"]) or state["epoch"] < 0:
        return f"epoch is {state['epoch']!r}, not a count of epochs"
    if "world_size" in state and (not _is_int(state["world_size"]) or state["world_size"] < 1):
        return f"world_size is {state['world_size']!r}, not a process count"
    model = state["model"]
    if not isinstance(model, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        return "model is not a mapping of names to tensors"
    for name, tensor in model.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"model weights {name} hold NaN or infinite values"
    optimizer = state["optimizer"]
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("state"), dict)
        or not isinstance(optimizer.get("param_groups"), list)
    ):
        return "optimizer is not an optimizer state (state, param_groups)"
    rng = state["rng"]
    if (
        not isinstance(rng, dict)
        or not _is_bytes_state(rng.get("torch"))
        or not _is_bytes_state(rng.get("order"))
        or not isinstance(rng.get("cuda"), list)
        or not all(_is_bytes_state(s) for s in rng["cuda"])
    ):
        return "rng is not the saved generator states (torch, order: uint8 tensors; cuda: a list of them)"
    history = state["history"]
    plain = (int, float, type(None))
    if not isinstance(history, list) or not all(
        isinstance(r, dict) and all(isinstance(k, str) and isinstance(v, plain) for k, v in r.items()) for r in history
    ):
        return "history is not a list of per-epoch records (names to numbers)"
    if not isinstance(state["config"], dict):
        return "config is not a mapping"
    spec = state["model_spec"]
    if (
        not isinstance(spec, dict)
        or not _int_list(spec.get("channels"))
        or not isinstance(spec.get("map_sizes"), list)
        or not all(_int_list(size) and len(size) == 2 for size in spec["map_sizes"])
    ):
        return "model_spec is not the saved map shapes (channels, map_sizes)"
    return None


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(_is_int(v) and v > 0 for v in value)


def check_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """After `optimizer.load_state_dict`: every per-parameter tensor (Adam's moments) has its parameter's shape.

    torch does not check this, and a misfit would fail at the first step, mid-run.
    """
    for group in optimizer.param_groups:
        for number, parameter in enumerate(group["params"]):
            for name, value in optimizer.state.get(parameter, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                    raise CheckpointError(
                        f"{path}: damaged or tampered checkpoint (optimizer {name} of parameter {number}: "
                        f"shape {tuple(value.shape)} != {tuple(parameter.shape)})"
                    )


def ensure_same_config(checkpoint: Path, saved: object) -> dict[str, Any]:
    """The checkpoint's config, after checking it agrees with the run's config.yaml beside it."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{checkpoint}: holds no config")
    config_file = Path(checkpoint).parent / "config.yaml"
    if not config_file.is_file():  # every run writes it first: a checkpoint alone is not a run
        raise CheckpointError(f"{checkpoint}: no {config_file.name} beside it, so this is not a complete run folder")
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
