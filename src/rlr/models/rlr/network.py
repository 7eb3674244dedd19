"""RLR reconstructor (He et al., ECCV 2024), one per backbone feature level.

The reconstruction of a feature map is assembled from a learnable reference, never from the
input at the same place: LCA reads the reference in a local window, MLKA reads the input only
far away (its own neighbourhood masked), and no residual connection bypasses the two.
See docs of the method (method.md) for the equations; the names below follow them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from rlr.models.base import Reconstructor
from rlr.models.layers.attention import MaskedAttention, WindowAttention, window_mask, window_neighbours
from rlr.models.layers.position import sincos_position_encoding

DEFAULT_WINDOWS = {16: 5, 32: 7, 64: 11}  # map side -> LCA/MLKA window w (the paper's choice)
INITS = ("torch", "release")
REACHES = ("window", "global")  # what LCA reads of the reference: the w x w window around a position, or all of it


def resolve_window(map_size: tuple[int, int], window: int | None) -> int:
    """The configured window, or the paper's window for this map size; an error names the gap."""
    if window is not None:
        return window
    height, width = map_size
    if height == width and height in DEFAULT_WINDOWS:
        return DEFAULT_WINDOWS[height]
    raise ValueError(
        f"no default attention window for a {height}x{width} feature map "
        f"(defaults exist for {sorted(DEFAULT_WINDOWS)}); set model.windows in the config"
    )


class RLRLayer(nn.Module):
    """One layer: Z = LN(fuse(sum_i LCA(Y, R_i), MLKA(Y, R))); Y' = LN(Z + FFN(Z)).

    Fusion 'alpha' (the paper's Eq. 4) is alpha * LCA + MLKA with a fixed alpha; 'theta' (the
    supplementary's Eq. 1) is theta1 * MLKA + theta2 * LCA with both weights learned.

    Reach 'window' is the paper's LCA (each position reads each reference in its w x w window,
    one attention per reference, summed). Reach 'global' reads every token of every reference in
    one attention, so the reference acts as a position-free learned dictionary of K x HW
    prototypes (the position code still lets it prefer nearby ones): texture that repeats
    anywhere in the image need not be learned at every position.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_ratio: int,
        alpha: float,
        fusion: str = "alpha",
        theta_init: tuple[float, float] = (1.0, 1.0),
        dropout: float = 0.0,
        reach: str = "window",
    ) -> None:
        super().__init__()
        if fusion not in ("alpha", "theta"):
            raise ValueError(f"unknown fusion '{fusion}' (known: alpha, theta)")
        if reach not in REACHES:
            raise ValueError(f"unknown reference reach '{reach}' (known: {', '.join(REACHES)})")
        self.fusion = fusion
        self.reach = reach
        self.alpha = alpha
        if fusion == "theta":
            self.theta = nn.Parameter(torch.tensor([float(theta_init[0]), float(theta_init[1])]))
        self.lca = WindowAttention(dim, num_heads) if reach == "window" else MaskedAttention(dim, num_heads)
        self.mlka = MaskedAttention(dim, num_heads)
        self.fuse_norm = nn.LayerNorm(dim)
        self.ffn = Mlp(dim, ffn_ratio * dim, act_layer=nn.GELU)
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(dim)

    def forward(
        self,
        tokens: torch.Tensor,
        references: torch.Tensor,
        window_index: torch.Tensor,
        window_valid: torch.Tensor,
        far_mask: torch.Tensor,
    ) -> torch.Tensor:
        """tokens (B, N, d); references (K, N, d) embedded; window (N, w*w); far_mask (N, N) bool."""
        if self.reach == "window":
            lca = sum(self.lca(tokens, ref[None], ref[None], window_index, window_valid) for ref in references)
        else:
            dictionary = references.reshape(1, -1, references.shape[-1])
            lca = self.lca(tokens, dictionary, dictionary, None)
        mlka = self.mlka(tokens, references.mean(0, keepdim=True), tokens, far_mask)
        if self.fusion == "theta":
            mixed = self.theta[0] * mlka + self.theta[1] * lca
        else:
            mixed = self.alpha * lca + mlka
        fused = self.fuse_norm(self.dropout(mixed))
        return self.out_norm(fused + self.dropout(self.ffn(fused)))


class LevelReconstructor(nn.Module):
    """Reconstructs one (B, C, h, w) feature map from its learnable reference(s)."""

    def __init__(
        self,
        channels: int,
        map_size: tuple[int, int],
        dim: int,
        num_layers: int = 4,
        num_heads: int = 8,
        ffn_ratio: int = 4,
        window: int | None = None,
        alpha: float = 2.0,
        num_references: int = 1,
        fusion: str = "alpha",
        theta_init: tuple[float, float] = (1.0, 1.0),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        reach: str = "window",
    ) -> None:
        super().__init__()
        height, width = map_size
        tokens = height * width
        self.map_size = (height, width)
        self.num_references = num_references
        self.window = resolve_window(self.map_size, window)
        self.reference = nn.Parameter(torch.randn(num_references * tokens, channels))
        self.input_embed = nn.Linear(channels, dim)
        self.input_dropout = nn.Dropout(input_dropout)  # the noisy bottleneck: active in training only
        self.reference_embed = nn.Linear(channels, dim)
        self.layers = nn.ModuleList(
            RLRLayer(dim, num_heads, ffn_ratio, alpha, fusion, theta_init, dropout, reach) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(dim)
        self.project = nn.Linear(dim, channels)
        near = window_mask(height, width, self.window)
        if near.all(dim=1).any():
            raise ValueError(
                f"a {self.window}x{self.window} window covers the whole {height}x{width} map, "
                "so MLKA would see nothing; choose a smaller model.windows entry"
            )
        self.register_buffer("position", sincos_position_encoding(height, width, dim), persistent=False)
        index, valid = window_neighbours(height, width, self.window)
        self.register_buffer("window_index", index, persistent=False)
        self.register_buffer("window_valid", valid, persistent=False)
        self.register_buffer("far_mask", ~near, persistent=False)

    def embedded_references(self) -> torch.Tensor:
        """R_h: (K, HW, d), computed once per forward and shared by every layer."""
        refs = self.reference.view(self.num_references, -1, self.reference.shape[-1])
        return self.reference_embed(refs) + self.position

    def reference_similarity(self) -> torch.Tensor:
        """Mean over reference pairs and tokens of cos(R_i[t], R_j[t]): the diversity term (0 for K = 1)."""
        if self.num_references < 2:
            return self.reference.new_zeros(())
        refs = F.normalize(self.reference.view(self.num_references, -1, self.reference.shape[-1]), dim=-1)
        first, second = torch.triu_indices(self.num_references, self.num_references, offset=1)
        return (refs[first] * refs[second]).sum(-1).mean()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = features.shape
        if (height, width) != self.map_size:
            raise ValueError(f"expected a {self.map_size} feature map, got {(height, width)}")
        tokens = features.flatten(2).transpose(1, 2)
        hidden = self.input_dropout(self.input_embed(tokens)) + self.position
        references = self.embedded_references()
        for layer in self.layers:
            hidden = layer(hidden, references, self.window_index, self.window_valid, self.far_mask)
        out = self.project(self.final_norm(hidden))
        return out.transpose(1, 2).reshape(batch, channels, height, width)


def release_init(level: LevelReconstructor) -> None:
    """The authors' release initialisation, which nn.Linear's defaults do not reproduce.

    Its input and reference projections are 1x1 convolutions with Kaiming-normal weights (fan-in,
    gain sqrt 2: the embedded reference starts ~2.4x larger relative to the position code), and
    its attentions are nn.MultiheadAttention, whose packed (3d, d) query/key/value matrix gets
    Xavier-uniform weights and zero biases, with a zero output bias. Biases of the projections and
    every other layer keep their defaults, as in the release.
    """
    nn.init.kaiming_normal_(level.input_embed.weight)
    nn.init.kaiming_normal_(level.reference_embed.weight)
    for layer in level.layers:
        for attention in (layer.lca, layer.mlka):
            dim = attention.q_proj.in_features
            bound = math.sqrt(6.0 / (dim + 3 * dim))  # Xavier-uniform of the packed (3d, d) matrix
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                nn.init.uniform_(projection.weight, -bound, bound)
                nn.init.zeros_(projection.bias)
            nn.init.zeros_(attention.out_proj.bias)


class RLR(Reconstructor):
    """One independent reconstructor per feature level; forward maps a list of maps to a list."""

    renamed_parameters = ((r"\.ffn\.0\.", ".ffn.fc1."), (r"\.ffn\.2\.", ".ffn.fc2."))  # nn.Sequential FFN -> timm Mlp

    def __init__(
        self,
        channels: Sequence[int],
        map_sizes: Sequence[tuple[int, int]],
        dims: Sequence[int],
        num_layers: int = 4,
        num_heads: int = 8,
        ffn_ratio: int = 4,
        windows: Sequence[int | None] | None = None,
        alpha: float = 2.0,
        num_references: int = 1,
        fusion: str = "alpha",
        theta_init: tuple[float, float] = (1.0, 1.0),
        dropout: float = 0.0,
        diversity_weight: float = 1.0,
        input_dropout: float = 0.0,
        init: str = "torch",
        reach: str = "window",
    ) -> None:
        super().__init__()
        self.diversity_weight = diversity_weight
        levels = len(channels)
        if not (len(map_sizes) == len(dims) == levels):
            raise ValueError(
                f"got {levels} feature levels but {len(dims)} hidden widths and {len(map_sizes)} map sizes"
            )
        windows = list(windows) if windows is not None else [None] * levels
        if len(windows) != levels:
            raise ValueError(f"got {levels} feature levels but {len(windows)} attention windows")
        self.levels = nn.ModuleList(
            LevelReconstructor(
                c,
                tuple(s),
                d,
                num_layers,
                num_heads,
                ffn_ratio,
                w,
                alpha,
                num_references,
                fusion,
                theta_init,
                dropout,
                input_dropout,
                reach,
            )
            for c, s, d, w in zip(channels, map_sizes, dims, windows)
        )
        if init not in INITS:
            raise ValueError(f"unknown init '{init}' (known: {', '.join(INITS)})")
        if init == "release":
            for level in self.levels:
                release_init(level)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [level(f) for level, f in zip(self.levels, features)]

    def level_auxiliary_losses(self) -> list[torch.Tensor]:
        """Each level's weighted reference-diversity term (zero with one reference)."""
        return [self.diversity_weight * level.reference_similarity() for level in self.levels]

    def diagnostics(self) -> dict[str, float]:
        """Learned fusion weights per layer ('level0.layer1.theta_mlka', ...), for the training log."""
        values: dict[str, float] = {}
        for i, level in enumerate(self.levels):
            for j, layer in enumerate(level.layers):
                if layer.fusion == "theta":
                    theta_mlka, theta_lca = layer.theta.detach().tolist()
                    values[f"level{i}.layer{j}.theta_mlka"] = theta_mlka
                    values[f"level{i}.layer{j}.theta_lca"] = theta_lca
        return values
