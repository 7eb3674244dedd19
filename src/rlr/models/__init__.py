"""The model registry: every reconstructor the library can train, by `model.name`.

A model is a package under `rlr.models` whose `SPEC` (a `ModelSpec`) declares its config
section, builder, loss and scoring; one `register_model` line below makes it known to the
config, the engine and the CLI, none of which name any model.
"""

from __future__ import annotations

from typing import Sequence

from rlr.errors import ConfigError
from rlr.models import rlr, uniad
from rlr.models.base import ModelConfig, ModelSpec, Reconstructor

DEFAULT_MODEL = "rlr"

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Make `spec` available as `model.name: <spec.name>`; a name can be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a model named '{spec.name}' is already registered")
    if spec.config().name != spec.name:
        raise ValueError(f"model '{spec.name}': its config section's default name is '{spec.config().name}'")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registered model `name`; an unknown name is a one-line ConfigError listing the known ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model.name '{name}' (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def create_model(section: ModelConfig, channels: Sequence[int], map_sizes: Sequence[tuple[int, int]]) -> Reconstructor:
    """The network a model section describes, for backbone maps of these channels and sizes."""
    return model_spec(section.name).build(section, channels, map_sizes)


# the registry: one line per model
register_model(rlr.SPEC)
register_model(uniad.SPEC)
