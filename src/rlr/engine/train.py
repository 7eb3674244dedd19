"""Train one unified reconstructor on the cached features of every class's normal images.

`_train` runs the stages in order: set-up (run folder, config), features, model, resume, then the
epoch loop, whose step is `engine.step.train_step`, with a checkpoint after every epoch
(`engine.runs`: `--resume` after a crash gives the same weights as a run that never stopped).

Under `torchrun` every process trains a replica with DistributedDataParallel: all draw the same
epoch order and the same feature jitter for the whole global batch (batch_size x processes) and
each reconstructs its own equal share of it, so N processes with batch B follow a single process
with batch N x B up to float rounding. Only rank 0 writes files or shows progress.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterator, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from rlr.config import RunConfig, save_config
from rlr.data.split import DatasetSplit
from rlr.data.transforms import warn_if_stretched
from rlr.data.types import ImageRecord
from rlr.engine.build import build_cache, build_extractor, build_model, build_split, features_for
from rlr.engine.distributed import Context, session
from rlr.engine.progress import TrainingProgress, banner_lines, class_counts
from rlr.engine.provenance import write_run_info
from rlr.engine.runs import (
    CHECKPOINT_NAME,
    discard_staged,
    prepare_run_dir,
    replace_run,
    restore,
    run_dir_for,
    save_epoch,
)
from rlr.engine.step import NonFiniteLoss, build_optimizer, learning_rate, train_step
from rlr.errors import ConfigError, RlrError
from rlr.models.base import Reconstructor


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


@dataclass
class _Run:
    """What the epoch loop works on: the model (`net` runs its forward pass), its optimizer, the data."""

    config: RunConfig
    run_dir: Path
    context: Context
    features: list[torch.Tensor]
    model: Reconstructor
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.features[0].shape[0]

    @property
    def padded_count(self) -> int:
        """The epoch's sample count, padded to a multiple of the processes (see `shard_batches`)."""
        return self.count + (-self.count % self.context.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.padded_count / (self.config.train.batch_size * self.context.world_size))


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
        try:
            _train(config, run_dir, overwrite, resume, context)
        except BaseException:
            if context.is_main:
                discard_staged(run_dir)  # an --overwrite that failed before its swap: the old run stays as it was
            raise
    return run_dir


def _train(config: RunConfig, run_dir: Path, overwrite: bool, resume: dict[str, Any] | None, context: Context) -> None:
    split, folder = _set_up(config, run_dir, overwrite, resume is not None, context)
    if context.is_main:  # said before the feature pass, which can take long
        tested = [r.image_path for records in split.test.values() for r in records]
        warn_if_stretched([*(r.image_path for r in split.train), *tested], config.data.resize)
    features = _train_features(config, split.train, context)
    if context.is_main:
        write_run_info(folder, config, split.train, context.device)
    run = _build(config, folder, features, context)
    first_epoch = 1 if resume is None else _resume(run, resume)
    run.net = _runner(run)
    steps = run.steps_per_epoch
    run.net.train()
    with TrainingProgress(config.train.epochs, first_epoch, steps, enabled=context.is_main) as progress:
        progress.banner(_banner(run, split, first_epoch, run_dir))
        for epoch in range(first_epoch, config.train.epochs + 1):
            run.history.append(_train_epoch(run, epoch, progress))
            progress.epoch_done(run.history[-1])
            if context.is_main:
                save_epoch(run.run_dir, _checkpoint(run, epoch))
            run.run_dir = replace_run(run.run_dir, run_dir)  # an --overwrite swaps in after its first checkpoint


def _set_up(
    config: RunConfig, run_dir: Path, overwrite: bool, resuming: bool, context: Context
) -> tuple[DatasetSplit, Path]:
    """Refuse settings this machine cannot train, prepare the run folder, save the config; the data split
    and the folder to write into (`runs.prepare_run_dir`)."""
    check_precision(config.train.precision, context.device)
    if config.train.release_stepping and context.distributed:
        raise ConfigError(
            "train.release_stepping steps once per level, which DDP's one all-reduce per step cannot follow"
        )
    split = build_split(config)
    # every process checks, before the barrier, so a refusal stops them all
    folder = run_dir if resuming else prepare_run_dir(run_dir, overwrite)
    if context.is_main:
        save_config(config, folder / "config.yaml")
    return split, folder


def _build(config: RunConfig, run_dir: Path, features: list[torch.Tensor], context: Context) -> _Run:
    """The seeded model for the features' shapes, its optimizer and the epoch-order generator."""
    t = config.train
    torch.manual_seed(t.seed)
    model = build_model(config, [f.shape[1] for f in features], [tuple(f.shape[-2:]) for f in features])
    model = model.to(context.device)
    generator = torch.Generator().manual_seed(t.seed)
    return _Run(config, run_dir, context, features, model, model, build_optimizer(config, model), generator)


def _runner(run: _Run) -> torch.nn.Module:
    """What runs the forward pass: the model under DDP and/or torch.compile, or the model itself.

    `run.model` stays the plain module (its state_dict, diagnostics, auxiliary loss).
    """
    net: torch.nn.Module = run.model
    device = run.context.device
    if run.context.distributed:
        net = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)
    if run.config.train.compile:
        net = torch.compile(net)
    return net


def _resume(run: _Run, state: dict[str, Any]) -> int:
    """Continue from a checkpoint: weights, optimizer, random state and history; returns the next epoch."""
    context = run.context
    restore(run.model, run.optimizer, state, run.run_dir / CHECKPOINT_NAME, context.device)
    run.generator.set_state(state["rng"]["order"])
    run.history = list(state.get("history", []))
    trained_by = state.get("world_size", 1)
    if trained_by != context.world_size and context.is_main:
        batch = run.config.train.batch_size
        print(
            f"rlr: warning: {run.run_dir / CHECKPOINT_NAME} was trained by {trained_by} process(es), continuing with "
            f"{context.world_size}: the global batch changes from {trained_by * batch} "
            f"to {context.world_size * batch}",
            file=sys.stderr,
        )
    return state["epoch"] + 1


def _banner(run: _Run, split: DatasetSplit, first_epoch: int, run_dir: Path) -> list[str]:
    """The start banner's facts, read off this run (`engine.progress.banner_lines` words them)."""
    context, t = run.context, run.config.train
    device = str(context.device)
    if context.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(context.device)})"
    return banner_lines(
        device,
        torch.get_num_threads(),
        context.world_size,
        class_counts(split.train),
        t.epochs,
        first_epoch,
        run.steps_per_epoch,
        t.batch_size,
        run_dir,
    )


def _train_epoch(run: _Run, epoch: int, progress: TrainingProgress) -> dict[str, Any]:
    """One pass over the shuffled features; returns the epoch's log record."""
    config, context, t = run.config, run.context, run.config.train
    started = time.perf_counter()
    order = torch.randperm(run.count, generator=run.generator)
    total = 0.0
    for step, (batch, mine) in enumerate(shard_batches(order, t.batch_size, context.rank, context.world_size), 1):
        global_step = (epoch - 1) * run.steps_per_epoch + step - 1
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(config, global_step, run.steps_per_epoch)
        clean = [f[batch].to(context.device, torch.float32) for f in run.features]
        dropout = functools.partial(_own_dropout, context, t.seed, epoch, step)
        try:  # every process sees the mean loss, so all stop together
            loss = train_step(
                config,
                run.model,
                run.optimizer,
                clean,
                global_step,
                rows=mine,
                net=run.net,
                forward=dropout,
                reduce=context.mean,
            )
        except NonFiniteLoss as exc:
            raise RlrError(
                f"non-finite loss ({exc.value}) at epoch {epoch}, step {step}: training stopped; "
                f"{run.run_dir / CHECKPOINT_NAME} keeps the last good epoch ({epoch - 1})"
            ) from None
        total += loss * len(batch)
        progress.step(epoch, loss)
    record: dict[str, Any] = {
        "epoch": epoch,
        "loss": total / run.padded_count,
        "seconds": time.perf_counter() - started,
        "steps": run.steps_per_epoch,
    }
    if context.distributed:
        record.update(world_size=context.world_size, replica_max_difference=context.replica_difference(run.model))
    return {**record, **run.model.diagnostics()}


def _checkpoint(run: _Run, epoch: int) -> dict[str, Any]:
    """Everything `last.pt` holds to continue exactly after `epoch`."""
    device = run.context.device
    return {
        "epoch": epoch,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
            "order": run.generator.get_state(),
        },
        "history": run.history,
        "world_size": run.context.world_size,
        "config": run.config.to_dict(),
        "model_spec": {
            "channels": [f.shape[1] for f in run.features],
            "map_sizes": [list(f.shape[-2:]) for f in run.features],
        },
    }
