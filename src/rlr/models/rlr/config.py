"""RLR's config section: its keys, their checks, and the network they build."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence, cast

from rlr.errors import ConfigError
from rlr.models.base import ModelConfig, RunSettings
from rlr.models.rlr.network import INITS, REACHES, RLR
from rlr.validation import check_attention, check_choice, check_per_level, check_range, check_window

FUSIONS = ("alpha", "theta")


@dataclass
class RLRConfig(ModelConfig):
    name: str = "rlr"
    hidden_dims: list[int] = field(default_factory=lambda: [256, 512])  # one per feature level
    num_layers: int = 4
    num_heads: int = 8
    ffn_ratio: int = 4
    windows: list[int] | None = None  # LCA/MLKA window per level (None: the paper's for the map size)
    dropout: float = 0.0
    input_dropout: float = 0.0  # dropout on the embedded input tokens while training (Dinomaly's noisy bottleneck: 0.2)
    init: str = "torch"  # "torch": nn.Linear defaults; "release": the authors' (Kaiming-normal embeddings, Xavier attention, zero biases)
    reference_reach: str = "window"  # "window": LCA reads the reference near each position (paper); "global": all
    fusion: str = "alpha"  # "alpha": alpha * LCA + MLKA; "theta": theta1 * MLKA + theta2 * LCA, learned per layer
    alpha: float = 2.0
    theta_init: list[float] = field(default_factory=lambda: [1.0, 1.0])  # (theta1 for MLKA, theta2 for LCA)
    num_references: int = 1
    diversity_weight: float = 1.0  # weight of the mean pairwise cosine between references (K > 1)

    descriptions: ClassVar[dict[str, str]] = {
        "hidden_dims": "transformer width per feature level",
        "num_layers": "transformer layers",
        "num_heads": "attention heads",
        "ffn_ratio": "feed-forward width as a multiple of the hidden width",
        "windows": "local attention window per level (null: the paper's for the map size)",
        "dropout": "dropout inside the transformer",
        "input_dropout": "dropout on the embedded input tokens while training",
        "init": "weight initialisation, torch defaults or release (the authors')",
        "reference_reach": "what LCA reads of the reference, the window around each position or all of it (global)",
        "fusion": "how local and masked attention combine, alpha or theta",
        "alpha": "alpha of fusion alpha (alpha x LCA + MLKA)",
        "theta_init": "starting (theta1 for MLKA, theta2 for LCA) of fusion theta",
        "num_references": "number of learnable references",
        "diversity_weight": "weight of the pairwise cosine between references (more than one)",
    }


def validate(config: RunSettings) -> None:
    """RLR's keys, and the run settings they must agree with (the backbone's levels, the trainer's stepping)."""
    m, backbone = cast(RLRConfig, config.model), config.backbone
    check_per_level("model.hidden_dims", m.hidden_dims, backbone.merge, backbone.out_indices)
    if m.windows is not None:
        check_per_level("model.windows", m.windows, backbone.merge, backbone.out_indices)
        for window in m.windows:
            check_window("model.windows", window)
    check_attention(m)
    check_choice("model.fusion", m.fusion, FUSIONS)
    check_choice("model.init", m.init, INITS)
    check_choice("model.reference_reach", m.reference_reach, REACHES)
    check_range("model.input_dropout", m.input_dropout, 0.0, 1.0, high_open=True)
    if len(m.theta_init) != 2:
        raise ConfigError("model.theta_init needs two values: (theta1 for MLKA, theta2 for LCA)")
    if m.num_references < 1:
        raise ConfigError("model.num_references must be at least 1")
    if config.train.release_stepping and m.num_references > 1:
        raise ConfigError(
            "train.release_stepping reproduces the release, which has one reference: set model.num_references=1"
        )


def build(m: RLRConfig, channels: Sequence[int], map_sizes: Sequence[tuple[int, int]]) -> RLR:
    return RLR(
        channels,
        map_sizes,
        m.hidden_dims,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        ffn_ratio=m.ffn_ratio,
        windows=m.windows,
        alpha=m.alpha,
        num_references=m.num_references,
        fusion=m.fusion,
        theta_init=tuple(m.theta_init),
        dropout=m.dropout,
        diversity_weight=m.diversity_weight,
        input_dropout=m.input_dropout,
        init=m.init,
        reach=m.reference_reach,
    )
