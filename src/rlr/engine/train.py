"""Train one unified reconstructor on the cached features of every class's normal images.

After every epoch `last.pt` is replaced atomically with everything needed to continue exactly
(model, optimizer, both random generators, the epoch history), so `--resume` after a crash gives
the same weights as a run that never stopped.

Under `torchrun` every process trains a replica with DistributedDataParallel: all draw the same
epoch order and the same feature jitter for the whole global batch (batch_size x processes) and
each reconstructs its own equal share of it, so N processes with batch B follow a single process
with batch N x B up to float rounding. Only rank 0 writes files or shows progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rlr.atomic import write_text
from rlr.config import RunConfig, from_dict, save_config, training_objective
from rlr.data.types import ImageRecord
from rlr.engine.build import build_cache, build_extractor, build_model, build_split, features_for
from rlr.engine.checkpoint import ensure_same_config, load_checkpoint, load_model_state, save_checkpoint
from rlr.engine.distributed import Context, is_main_process, session
from rlr.engine.provenance import write_run_info
from rlr.errors import CheckpointError, ConfigError, RlrError
from rlr.models import model_spec
from rlr.models.base import Reconstructor
from rlr.models.losses import hard_fraction_at, reconstruction_loss

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
    if is_main_process():  # the one writer cleans up; under torchrun the others would race it
        for stale in run_dir.glob(".*.tmp"):  # left by a process killed while writing
            stale.unlink()
    return from_dict(saved), state


def build_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW over every parameter."""
    t = config.train
    kind = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def learning_rate(config: RunConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0-based): a pure function of it, so resume needs no state.

    Schedule 'step': lr, times 0.1 after epoch `lr_step_epoch`; 'cosine': from lr down to
    lr x min_lr_ratio at the last step. Either starts with a linear warm-up over `warmup_steps`.
    """
    t = config.train
    warmup = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
    if t.schedule == "cosine":
        total = t.epochs * steps_per_epoch
        progress = max(0, step - t.warmup_steps) / max(1, total - t.warmup_steps - 1)
        factor = t.min_lr_ratio + (1.0 - t.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    else:
        epoch = step // steps_per_epoch + 1
        factor = 0.1 if t.lr_step_epoch > 0 and epoch > t.lr_step_epoch else 1.0
    return t.lr * warmup * factor


def level_losses(
    config: RunConfig,
    model: Reconstructor,
    reconstructions: list[torch.Tensor],
    clean: list[torch.Tensor],
    step: int = 0,
) -> list[torch.Tensor]:
    """Each level's reconstruction loss plus the model's own term for that level."""
    t = config.train
    kind = training_objective(config)
    fraction = hard_fraction_at(step, t.hard_fraction, t.hard_ramp_steps)
    losses = [reconstruction_loss(r, f, kind, fraction, t.hard_factor) for r, f in zip(reconstructions, clean)]
    return [loss + extra for loss, extra in zip(losses, model.level_auxiliary_losses(), strict=True)]


def training_loss(
    config: RunConfig,
    model: Reconstructor,
    reconstructions: list[torch.Tensor],
    clean: list[torch.Tensor],
    step: int = 0,
) -> torch.Tensor:
    """The loss of one step: every level's loss summed."""
    return sum(level_losses(config, model, reconstructions, clean, step))


def optimizer_step(
    config: RunConfig,
    model: Reconstructor,
    optimizer: torch.optim.Optimizer,
    losses: list[torch.Tensor],
    recompute: Callable[[], list[torch.Tensor]],
) -> None:
    """One step on the summed loss; or, with `release_stepping`, one backward and Adam step per level.

    The release's per-level steps share one Adam and zero (not free) the gradients in between, so
    each step also moves every other level's parameters by their momentum alone. Its levels run
    their forward pass one after another, each after the previous level's step, so every level
    after the first is recomputed (`recompute`) on the weights that step left.
    """
    t = config.train
    if not t.release_stepping:
        optimizer.zero_grad(set_to_none=True)
        sum(losses).backward()
        _clip_and_step(config, model, optimizer)
        return
    for level in range(len(losses)):
        if level > 0:
            losses = recompute()
        optimizer.zero_grad(set_to_none=False)
        losses[level].backward()
        _clip_and_step(config, model, optimizer)


def _clip_and_step(config: RunConfig, model: Reconstructor, optimizer: torch.optim.Optimizer) -> None:
    if config.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
    optimizer.step()


def _restore(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Path, device: torch.device
) -> None:
    load_model_state(model, state.get("model"), path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], device)
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


def shard_batches(
    order: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, slice]]:
    """Each global batch of `batch_size * world_size` samples, and the rows of it this process trains on.

    The order is first padded with its own start to a multiple of `world_size` (as DistributedSampler
    does), so every process takes the same number of rows at every step, the last short batch too;
    DDP's average of the processes' gradients is then the gradient of the whole batch's mean loss.
    """
    extra = -len(order) % world_size
    padded = torch.cat([order, order[torch.arange(extra) % len(order)]])
    for start in range(0, len(padded), batch_size * world_size):
        batch = padded[start : start + batch_size * world_size]
        share = len(batch) // world_size
        yield batch, slice(rank * share, (rank + 1) * share)


def autocast(precision: str, device: torch.device) -> ContextManager:
    """bfloat16 autocast around the forward pass for train.precision=bf16; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse bf16 on a GPU that would emulate it (pre-Ampere) rather than train slowly without saying so."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"train.precision=bf16 but {name} has no bfloat16 support; use fp32")


def _own_dropout(context: Context, seed: int, epoch: int, step: int) -> ContextManager:
    """Under torchrun, dropout masks of this process's own, from a seed fixed by (seed, epoch, step, rank).

    Every process keeps the shared generator in step (same jitter, same state to checkpoint), so without
    this all replicas would drop the same units; a seed that depends only on the position resumes exactly.
    """
    if not context.distributed:
        return contextlib.nullcontext()
    return _seeded(context.device, f"{seed}/{epoch}/{step}/{context.rank}")


@contextlib.contextmanager
def _seeded(device: torch.device, key: str) -> Iterator[None]:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
        yield


def _train_features(config: RunConfig, records: Sequence[ImageRecord], context: Context) -> list[torch.Tensor]:
    """The training features, on every process: the first one on each machine fills the cache, the others read it."""
    extractor = build_extractor(config)
    cache = build_cache(config, extractor)
    features: list[torch.Tensor] = []
    if context.is_local_main:
        features = features_for(config, records, extractor, cache, context.device, "train features")
    context.barrier()
    if not context.is_local_main:
        features = features_for(config, records, extractor, cache, context.device, "train features")
    return features


def train(
    config: RunConfig,
    run_dir: Path | None = None,
    overwrite: bool = False,
    resume: dict[str, Any] | None = None,
) -> Path:
    """Train (or continue a checkpoint `resume`), writing `last.pt` after every epoch; returns the run dir.

    Launched by torchrun, every process calls this; see the module docstring.
    """
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    with session(config.train.device) as context:
        _train(config, run_dir, overwrite, resume, context)
    return run_dir


def _train(
    config: RunConfig, run_dir: Path, overwrite: bool, resume: dict[str, Any] | None, context: Context
) -> None:
    t = config.train
    device = context.device
    check_precision(t.precision, device)
    if t.release_stepping and context.distributed:
        raise ConfigError("train.release_stepping steps once per level, which DDP's one all-reduce per step cannot follow")
    split = build_split(config)
    if resume is None:  # every process checks, before the barrier, so a refusal stops them all
        prepare_run_dir(run_dir, overwrite)
    if context.is_main:
        save_config(config, run_dir / "config.yaml")
    features = _train_features(config, split.train, context)
    channels = [f.shape[1] for f in features]
    map_sizes = [tuple(f.shape[-2:]) for f in features]
    if context.is_main:
        write_run_info(run_dir, config, split.train, device)

    torch.manual_seed(t.seed)
    model = build_model(config, channels, map_sizes).to(device)
    jitter = model_spec(config.model.name).jitter
    optimizer = build_optimizer(config, model)
    generator = torch.Generator().manual_seed(t.seed)
    history: list[dict[str, Any]] = []
    first_epoch = 1
    if resume is not None:
        _restore(model, optimizer, resume, run_dir / CHECKPOINT_NAME, device)
        generator.set_state(resume["rng"]["order"])
        history = list(resume.get("history", []))
        first_epoch = resume["epoch"] + 1
        trained_by = resume.get("world_size", 1)
        if trained_by != context.world_size and context.is_main:
            print(
                f"rlr: warning: {run_dir / CHECKPOINT_NAME} was trained by {trained_by} process(es), continuing with "
                f"{context.world_size}: the global batch changes from {trained_by * t.batch_size} "
                f"to {context.world_size * t.batch_size}",
                file=sys.stderr,
            )

    # `model` stays the plain module (its state_dict, diagnostics, auxiliary loss); `net` runs the forward pass
    net: torch.nn.Module = model
    if context.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)

    count = features[0].shape[0]
    padded_count = count + (-count % context.world_size)
    steps_per_epoch = math.ceil(padded_count / (t.batch_size * context.world_size))
    net.train()
    bar = tqdm(
        total=t.epochs * steps_per_epoch,
        initial=(first_epoch - 1) * steps_per_epoch,
        desc="train",
        unit="step",
        disable=not context.is_main,
    )
    with bar:
        for epoch in range(first_epoch, t.epochs + 1):
            started = time.perf_counter()
            order = torch.randperm(count, generator=generator)
            total = 0.0
            batches = shard_batches(order, t.batch_size, context.rank, context.world_size)
            for step, (batch, mine) in enumerate(batches, 1):
                global_step = (epoch - 1) * steps_per_epoch + step - 1
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, global_step, steps_per_epoch)
                # the jitter is drawn for the whole global batch, so every process draws the same numbers
                clean = [f[batch].to(device, torch.float32) for f in features]
                noisy = [jitter(f, t.jitter_scale)[mine] for f in clean]
                clean = [f[mine] for f in clean]

                def step_losses() -> list[torch.Tensor]:
                    with _own_dropout(context, t.seed, epoch, step), autocast(t.precision, device):
                        reconstructions = net(noisy)
                    return level_losses(config, model, [r.float() for r in reconstructions], clean, global_step)

                losses = step_losses()
                mean_loss = context.mean(sum(losses).detach()).item()  # every process sees it, so all stop together
                if not math.isfinite(mean_loss):
                    raise RlrError(
                        f"non-finite loss ({mean_loss}) at epoch {epoch}, step {step}: training stopped; "
                        f"{run_dir / CHECKPOINT_NAME} keeps the last good epoch ({epoch - 1})"
                    )
                optimizer_step(config, model, optimizer, losses, step_losses)
                total += mean_loss * len(batch)
                bar.set_postfix(epoch=f"{epoch}/{t.epochs}", loss=f"{mean_loss:.4f}")
                bar.update(1)
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": total / padded_count,
                "seconds": time.perf_counter() - started,
                "steps": steps_per_epoch,
            }
            if context.distributed:
                record.update(world_size=context.world_size, replica_max_difference=context.replica_difference(model))
            history.append({**record, **model.diagnostics()})
            if context.is_main:
                _save(
                    run_dir,
                    {
                        "epoch": epoch,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "rng": {
                            "torch": torch.get_rng_state(),
                            "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
                            "order": generator.get_state(),
                        },
                        "history": history,
                        "world_size": context.world_size,
                        "config": config.to_dict(),
                        "model_spec": {"channels": channels, "map_sizes": [list(s) for s in map_sizes]},
                    },
                )
