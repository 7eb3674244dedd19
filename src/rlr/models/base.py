"""What every reconstructor provides, and what its registry entry declares.

The engine trains, tests and exports any model through these two seams only: the network
(`Reconstructor`) and its declaration (`ModelSpec`: config section, builder, default loss and
scoring). It never names a model.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, Sequence

import torch
from torch import nn

from rlr.models.jitter import feature_jitter


class Reconstructor(nn.Module, metaclass=abc.ABCMeta):
    """Maps a list of backbone feature maps to their reconstructions, one per level.

    `renamed_parameters` lists (old pattern, new text) pairs for state-dict keys an earlier
    version of the network used, so checkpoints trained before a rename still load.
    """

    renamed_parameters: tuple[tuple[str, str], ...] = ()

    @abc.abstractmethod
    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """(B, C_l, h_l, w_l) per level -> reconstructions of the same shapes."""

    @abc.abstractmethod
    def level_auxiliary_losses(self) -> list[torch.Tensor]:
        """The model's own loss term of each level (zeros if it has none), added to that level's objective."""

    def auxiliary_loss(self) -> torch.Tensor:
        """Every level's own term, summed."""
        return sum(self.level_auxiliary_losses())

    def diagnostics(self) -> dict[str, float]:
        """Learned values worth logging beside the loss after every epoch."""
        return {}

    def upgrade_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` with keys of earlier parameter names renamed to today's (see `renamed_parameters`)."""
        upgraded = {}
        for key, value in state.items():
            for old, new in self.renamed_parameters:
                key = re.sub(old, new, key)
            upgraded[key] = value
        return upgraded


@dataclass
class ModelConfig:
    """The model section of a run config: `name` picks the registered model, the rest is its own keys."""

    name: str = ""
    #: what each of the model's own keys means, for `rlr config show` (a test keeps it complete)
    descriptions: ClassVar[dict[str, str]] = {}

    @classmethod
    def upgrade(cls, values: dict[str, Any]) -> dict[str, Any]:
        """A section as an earlier version wrote it, in today's keys (nothing to do by default)."""
        return values


class RunSettings(Protocol):
    """The run config as a model's validator sees it (`rlr.config.RunConfig` is one).

    Typed by shape, so this package never imports the config module, which imports the registry.
    """

    model: ModelConfig
    backbone: Any
    train: Any


Builder = Callable[[Any, Sequence[int], Sequence[tuple[int, int]]], Reconstructor]


def _no_checks(config: RunSettings) -> None:
    """A model with nothing to check beyond its section's types."""


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its config section, how to build it, and its own recipe.

    `build(section, channels, map_sizes)` makes the network for the backbone's maps; `loss` is
    the objective `train.loss: auto` means, `map_score` / `image_score` what the eval section's
    `auto` means; `validate(run_config)` checks the model's section against the rest of the run
    (e.g. the backbone settings it needs); `jitter(features, scale)` makes the training input.
    `smoke_overrides` give a config small enough to train in seconds (the all-models test).
    """

    name: str
    title: str
    config: type[ModelConfig]
    build: Builder
    loss: str
    map_score: str
    image_score: str
    validate: Callable[[RunSettings], None] = _no_checks
    jitter: Callable[[torch.Tensor, float], torch.Tensor] = feature_jitter
    smoke_overrides: tuple[str, ...] = ()
