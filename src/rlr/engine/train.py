"""Train one unified reconstructor on the cached features of every class's normal images.

After every epoch `last.pt` is replaced atomically with everything needed to continue exactly
(model, optimizer, both random generators, the epoch history), so `--resume` after a crash gives
the same weights as a run that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rlr.atomic import write_text
from rlr.config import RunConfig, from_dict, save_config
from rlr.engine.build import (
    build_cache,
    build_extractor,
    build_model,
    build_split,
    features_for,
    resolve_device,
)
from rlr.engine.checkpoint import ensure_same_config, load_checkpoint, load_model_state, save_checkpoint
from rlr.engine.provenance import write_run_info
from rlr.errors import CheckpointError, RlrError
from rlr.models.rlr import feature_jitter, reconstruction_loss

CHECKPOINT_NAME = "last.pt"


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
    for stale in run_dir.glob(".*.tmp"):  # left by a process killed while writing
        stale.unlink()
    return from_dict(saved), state


def _restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Path) -> None:
    load_model_state(model, state.get("model"), path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: does not fit this model ({detail})") from None


def _save(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint, then the log; a failed write names the file and keeps the old one."""
    path = run_dir / CHECKPOINT_NAME
    try:
        save_checkpoint(path, state)
        lines = "".join(json.dumps(record) + "\n" for record in state["history"])
        write_text(run_dir / "train_log.jsonl", lines)
    except OSError as exc:
        raise RlrError(
            f"{path}: could not write checkpoint ({exc.strerror or exc}); "
            f"the previous checkpoint (epoch {state['epoch'] - 1}) is intact"
        ) from None


def train(
    config: RunConfig,
    run_dir: Path | None = None,
    overwrite: bool = False,
    resume: dict[str, Any] | None = None,
) -> Path:
    """Train (or continue a checkpoint `resume`), writing `last.pt` after every epoch; returns the run dir."""
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    split = build_split(config)
    if resume is None:
        prepare_run_dir(run_dir, overwrite)
    save_config(config, run_dir / "config.yaml")

    device = resolve_device(config.train.device)
    extractor = build_extractor(config)
    cache = build_cache(config, extractor)
    features = features_for(config, split.train, extractor, cache, device, "train features")
    channels = [f.shape[1] for f in features]
    map_sizes = [tuple(f.shape[-2:]) for f in features]
    write_run_info(run_dir, config, split.train, device)

    torch.manual_seed(config.train.seed)
    model = build_model(config, channels, map_sizes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    generator = torch.Generator().manual_seed(config.train.seed)
    history: list[dict[str, Any]] = []
    first_epoch = 1
    if resume is not None:
        _restore(model, optimizer, resume, run_dir / CHECKPOINT_NAME)
        generator.set_state(resume["rng"]["order"])
        history = list(resume.get("history", []))
        first_epoch = resume["epoch"] + 1

    count = features[0].shape[0]
    batch_size = config.train.batch_size
    steps_per_epoch = math.ceil(count / batch_size)
    epochs = config.train.epochs
    model.train()
    with tqdm(total=epochs * steps_per_epoch, initial=(first_epoch - 1) * steps_per_epoch, desc="train", unit="step") as bar:
        for epoch in range(first_epoch, epochs + 1):
            started = time.perf_counter()
            order = torch.randperm(count, generator=generator)
            total = 0.0
            for step, start in enumerate(range(0, count, batch_size), 1):
                index = order[start : start + batch_size]
                clean = [f[index].to(device, torch.float32) for f in features]
                noisy = [feature_jitter(f, config.train.jitter_scale) for f in clean]
                reconstructions = model(noisy)
                loss = sum(reconstruction_loss(r, f) for r, f in zip(reconstructions, clean))
                if not torch.isfinite(loss):
                    raise RlrError(
                        f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}: training stopped; "
                        f"{run_dir / CHECKPOINT_NAME} keeps the last good epoch ({epoch - 1})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
                bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{loss.item():.4f}")
                bar.update(1)
            history.append({"epoch": epoch, "loss": total / count, "seconds": time.perf_counter() - started})
            _save(
                run_dir,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                        "order": generator.get_state(),
                    },
                    "history": history,
                    "config": config.to_dict(),
                    "model_spec": {"channels": channels, "map_sizes": [list(s) for s in map_sizes]},
                },
            )
    return run_dir
