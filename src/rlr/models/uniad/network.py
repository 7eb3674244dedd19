"""UniAD reconstructor (You et al., NeurIPS 2022), the baseline RLR is compared with.

One merged multi-scale feature map is reconstructed by a post-norm transformer encoder-decoder.
Two devices keep it from learning the identity: every attention hides each query's own
n x n neighbourhood (neighbour-masked attention), and every decoder layer starts from its own
learned query instead of from the input (layer-wise query). Residual connections are kept, so
the shortcut is narrowed, not closed: that is the gap RLR addresses (see method.md).

Choices where UniAD leaves room: the position embedding is a learned row table and a learned
column table of d/2 channels each, concatenated per position (h + w vectors instead of h * w);
dropout acts on each attention's output, inside the FFN and on the FFN's output, not on the
attention weights (`MaskedAttention` has none).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import Mlp
from torch import nn

from rlr.models.base import Reconstructor
from rlr.models.layers.attention import MaskedAttention, window_mask


class AttendAndNorm(nn.Module):
    """LN(target + Dropout(Attn(target + pos, source + pos, source))): one masked attention step.

    The position embedding goes into queries and keys only, so values carry content alone.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = MaskedAttention(dim, num_heads)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, target: torch.Tensor, source: torch.Tensor, position: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """target, source (B, N, d); position (N, d); allowed (N, N) bool -> (B, N, d)."""
        attended = self.attention(target + position, source + position, source, allowed)
        return self.norm(target + self.dropout(attended))


class FeedForward(nn.Module):
    """LN(x + Dropout(FFN(x))) with a ReLU FFN of width ffn_ratio * d, as UniAD uses.

    timm's Mlp is exactly that FFN with both dropouts: after the ReLU and on its output.
    """

    def __init__(self, dim: int, ffn_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ffn = Mlp(dim, ffn_ratio * dim, act_layer=nn.ReLU, drop=dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens + self.ffn(tokens))


class EncoderLayer(nn.Module):
    """Neighbour-masked self-attention, then the FFN; both post-norm."""

    def __init__(self, dim: int, num_heads: int, ffn_ratio: int, dropout: float) -> None:
        super().__init__()
        self.self_attention = AttendAndNorm(dim, num_heads, dropout)
        self.feed_forward = FeedForward(dim, ffn_ratio, dropout)

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, d); position (N, d); allowed (N, N) bool -> (B, N, d)."""
        return self.feed_forward(self.self_attention(tokens, tokens, position, allowed))


class DecoderLayer(nn.Module):
    """Starts from its own learned query, reads the encoder memory, then the previous decoder layer.

    Owning the query (rather than refining the input token) is UniAD's layer-wise query: the
    output at a position is never the input at that position plus a correction.
    """

    def __init__(self, tokens: int, dim: int, num_heads: int, ffn_ratio: int, dropout: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(tokens, dim))  # unit scale, like the LayerNorm'd tokens
        self.memory_attention = AttendAndNorm(dim, num_heads, dropout)
        self.previous_attention = AttendAndNorm(dim, num_heads, dropout)
        self.feed_forward = FeedForward(dim, ffn_ratio, dropout)

    def forward(
        self, memory: torch.Tensor, previous: torch.Tensor, position: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """memory, previous (B, N, d); position (N, d); allowed (N, N) bool -> (B, N, d)."""
        query = self.query.expand(memory.shape[0], -1, -1)
        hidden = self.memory_attention(query, memory, position, allowed)
        hidden = self.previous_attention(hidden, previous, position, allowed)
        return self.feed_forward(hidden)


class UniAD(Reconstructor):
    """Reconstructs ONE (B, C, h, w) map (the backbone levels merged at stride 16), as a list of one."""

    renamed_parameters = ((r"\.ffn\.0\.", ".ffn.fc1."), (r"\.ffn\.3\.", ".ffn.fc2."))  # nn.Sequential FFN -> timm Mlp

    def __init__(
        self,
        channels: int,
        map_size: tuple[int, int],
        dim: int,
        num_layers: int = 4,
        num_heads: int = 8,
        ffn_ratio: int = 4,
        neighbourhood: int = 7,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        height, width = map_size
        if dim % num_heads:
            raise ValueError(f"hidden width {dim} is not divisible by {num_heads} heads")
        if dim % 2:
            raise ValueError(f"hidden width {dim} must be even: rows and columns each get half the position embedding")
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"the hidden neighbourhood must be a positive odd number, got {neighbourhood}")
        near = window_mask(height, width, neighbourhood)
        if near.all(dim=1).any():
            raise ValueError(
                f"a {neighbourhood}x{neighbourhood} hidden neighbourhood covers the whole {height}x{width} map, "
                "so some positions could attend to nothing; choose a smaller neighbourhood"
            )
        self.map_size = (height, width)
        self.input_embed = nn.Linear(channels, dim)
        self.row_embed = nn.Parameter(torch.randn(height, dim // 2))
        self.column_embed = nn.Parameter(torch.randn(width, dim // 2))
        self.encoder = nn.ModuleList(EncoderLayer(dim, num_heads, ffn_ratio, dropout) for _ in range(num_layers))
        self.decoder = nn.ModuleList(
            DecoderLayer(height * width, dim, num_heads, ffn_ratio, dropout) for _ in range(num_layers)
        )
        self.project = nn.Linear(dim, channels)
        self.register_buffer("allowed", ~near, persistent=False)

    def position(self) -> torch.Tensor:
        """(HW, d) row-major: [column embedding, row embedding] for every grid position."""
        height, width = self.map_size
        rows = self.row_embed[:, None, :].expand(-1, width, -1)
        columns = self.column_embed[None, :, :].expand(height, -1, -1)
        return torch.cat([columns, rows], dim=-1).reshape(height * width, -1)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != 1:
            raise ValueError(f"UniAD reconstructs one merged feature map, got {len(features)}")
        (feature_map,) = features
        batch, channels, height, width = feature_map.shape
        if (height, width) != self.map_size:
            raise ValueError(f"expected a {self.map_size} feature map, got {(height, width)}")
        position = self.position()
        memory = self.input_embed(feature_map.flatten(2).transpose(1, 2))
        for layer in self.encoder:
            memory = layer(memory, position, self.allowed)
        hidden = memory
        for layer in self.decoder:
            hidden = layer(memory, hidden, position, self.allowed)
        out = self.project(hidden)
        return [out.transpose(1, 2).reshape(batch, channels, height, width)]

    def level_auxiliary_losses(self) -> list[torch.Tensor]:
        """UniAD trains on the reconstruction loss alone: a zero on the parameters' device and dtype."""
        return [self.project.weight.new_zeros(())]
