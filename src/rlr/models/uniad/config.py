"""UniAD's config section: its keys, their checks, and the network they build."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence, cast

from rlr.errors import ConfigError
from rlr.models.base import ModelConfig, RunSettings
from rlr.models.uniad.network import UniAD
from rlr.validation import check_attention, check_per_level, check_window

# Before each model had its own section, every run saved all of these, which UniAD never read.
SHARED_SCHEMA_KEYS = ("fusion", "alpha", "theta_init", "num_references", "diversity_weight")
SHARED_SCHEMA_LATER_KEYS = ("input_dropout", "init")


@dataclass
class UniADConfig(ModelConfig):
    name: str = "uniad"
    hidden_dims: list[int] = field(default_factory=lambda: [256])  # one width: the merged map is one level
    num_layers: int = 4  # encoder layers, and as many decoder layers
    num_heads: int = 8
    ffn_ratio: int = 4
    neighbourhood: int = 7  # the n x n neighbourhood every attention hides from each query
    dropout: float = 0.0

    descriptions: ClassVar[dict[str, str]] = {
        "hidden_dims": "transformer width (one: the merged map is one level)",
        "num_layers": "encoder layers, and as many decoder layers",
        "num_heads": "attention heads",
        "ffn_ratio": "feed-forward width as a multiple of the hidden width",
        "neighbourhood": "n x n neighbourhood each query's attention hides",
        "dropout": "dropout inside the transformer",
    }

    @classmethod
    def upgrade(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Read `windows: [n]`, the neighbourhood's earlier name, and sections saved under the shared schema.

        Given both names (a preset's `neighbourhood`, then a user's `windows` override), the one
        set last wins, as a repeated key does. A section holding every key of the shared schema
        is a saved run: its RLR keys had no effect on UniAD and are dropped, whatever their
        values, so those runs load unchanged.
        """
        if "windows" not in values:
            return values
        order = list(values)
        values = dict(values)
        windows = values.pop("windows")
        later = "neighbourhood" not in values or order.index("windows") > order.index("neighbourhood")
        if later and windows is None:  # null meant the default
            values.pop("neighbourhood", None)
        elif later:
            if not isinstance(windows, list) or len(windows) != 1:
                raise ConfigError(f"model.windows (now model.neighbourhood) needs one entry for UniAD, got {windows!r}")
            values["neighbourhood"] = windows[0]
        if all(key in values for key in SHARED_SCHEMA_KEYS):
            for key in SHARED_SCHEMA_KEYS + SHARED_SCHEMA_LATER_KEYS:
                values.pop(key, None)
        return values


def validate(config: RunSettings) -> None:
    """UniAD reconstructs the merged backbone map, with one hidden width."""
    m, backbone = cast(UniADConfig, config.model), config.backbone
    if not backbone.merge:
        raise ConfigError("model.name=uniad reconstructs one merged map: set backbone.merge=true")
    check_per_level("model.hidden_dims", m.hidden_dims, backbone.merge, backbone.out_indices)
    check_attention(m)
    check_window("model.neighbourhood", m.neighbourhood)


def build(m: UniADConfig, channels: Sequence[int], map_sizes: Sequence[tuple[int, int]]) -> UniAD:
    return UniAD(
        channels[0],
        map_sizes[0],
        m.hidden_dims[0],
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        ffn_ratio=m.ffn_ratio,
        neighbourhood=m.neighbourhood,
        dropout=m.dropout,
    )
