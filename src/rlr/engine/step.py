"""One training step, written once: the trainer, `rlr ablate`'s timing probe and the benchmarks all call it.

A step is: feature jitter -> forward (under the precision's autocast) -> each level's objective
plus the model's own term -> backward -> (clipped) optimizer update, or with `release_stepping`
one backward and update per level. The learning rate schedule is a pure function of the step
number, so resuming needs no scheduler state.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager

import torch

from rlr.config import RunConfig, training_objective
from rlr.errors import RlrError
from rlr.models import model_spec
from rlr.models.base import Reconstructor
from rlr.models.losses import hard_fraction_at, reconstruction_loss


class NonFiniteLoss(RlrError):
    """The step's loss is NaN or infinite; raised before the update, so the weights are still good."""

    def __init__(self, value: float) -> None:
        super().__init__(f"non-finite loss ({value})")
        self.value = value


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


def autocast(precision: str, device: torch.device) -> ContextManager:
    """bfloat16 autocast around the forward pass for train.precision=bf16; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def train_step(
    config: RunConfig,
    model: Reconstructor,
    optimizer: torch.optim.Optimizer,
    features: list[torch.Tensor],
    step: int = 0,
    *,
    rows: slice = slice(None),
    net: torch.nn.Module | None = None,
    forward: Callable[[], ContextManager] = contextlib.nullcontext,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
) -> float:
    """One step on a batch of clean features (one float32 tensor per level, on the model's device).

    The jitter is drawn for the whole batch and only `rows` (this process's share under DDP) are
    trained on, so every process draws the same numbers. `net` runs the forward pass (`model`
    wrapped by DDP or torch.compile; default `model` itself), inside `forward()` as well as the
    autocast. `reduce` turns the summed loss into the value returned (DDP: the mean over
    processes). Raises NonFiniteLoss, before touching the weights, when that value is not finite.
    `step` is the global step number (the hard-mining ramp depends on it).
    """
    t = config.train
    jitter = model_spec(config.model.name).jitter
    noisy = [jitter(f, t.jitter_scale)[rows] for f in features]
    clean = [f[rows] for f in features]
    runner = model if net is None else net
    device = features[0].device

    def losses() -> list[torch.Tensor]:
        with forward(), autocast(t.precision, device):
            reconstructions = runner(noisy)
        return level_losses(config, model, [r.float() for r in reconstructions], clean, step)

    first = losses()
    value = reduce(sum(first).detach()).item()
    if not math.isfinite(value):
        raise NonFiniteLoss(value)
    optimizer_step(config, model, optimizer, first, losses)
    return value
