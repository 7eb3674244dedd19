"""A plain, obviously-correct RLR to check the efficient one against and to measure it by.

The efficient model computes LCA as windowed attention (each query against its w x w window only)
and MLKA through `scaled_dot_product_attention`. Here both are written out as the method states
them: scores q k^T / sqrt(d_h) over ALL (HW, HW) pairs, -inf where the spatial mask forbids a pair,
softmax, times v. The parameters are the same modules under the same names, so state_dicts load
both ways and the two models must agree up to float rounding.

For a fair speed comparison the dense masks are built once, at conversion, like the efficient
model's. The authors' release is slower still: it rebuilds its masks inside every forward pass.
"""

from __future__ import annotations

import copy

import torch

from rlr.models.layers.attention import MaskedAttention, window_mask
from rlr.models.rlr import RLR, RLRLayer


class PlainMaskedAttention(MaskedAttention):
    """`MaskedAttention` with the softmax written out instead of `scaled_dot_product_attention`."""

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """query (B, N, d); key, value (B or 1, M, d); allowed (N, M) bool -> (B, N, d)."""
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        q = q * q.shape[-1] ** -0.5  # scaled here, not on the (N, N) scores: one pass fewer over them
        scores = torch.matmul(q, k.transpose(-1, -2))  # (B, h, N, N)
        scores = torch.where(allowed, scores, float("-inf"))  # masked_fill(~allowed), minus the inverted copy
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.out_proj(out.transpose(1, 2).reshape(query.shape))


class PlainWindowAttention(PlainMaskedAttention):
    """LCA as full (HW, HW) attention under the dense window mask, a drop-in for `WindowAttention`.

    The mask comes from `window_mask`, independently of the neighbour table the efficient model
    uses, so a comparison also checks that table. It is a non-persistent buffer: state_dicts
    stay those of `WindowAttention`, and it moves with `.to()`.
    """

    def __init__(self, dim: int, num_heads: int, local: torch.Tensor) -> None:
        super().__init__(dim, num_heads)
        self.register_buffer("local", local, persistent=False)

    def forward(  # type: ignore[override]
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Same call as `WindowAttention`; the neighbour table (index, valid) is not used."""
        return super().forward(query, key, value, self.local)


def _make_plain(layer: RLRLayer, local: torch.Tensor) -> None:
    """Swap the layer's LCA and MLKA, in place, for plain modules holding the same weights."""
    dim, heads = layer.lca.q_proj.in_features, layer.lca.num_heads
    weight = layer.lca.q_proj.weight
    lca = PlainWindowAttention(dim, heads, local).to(weight)
    lca.load_state_dict(layer.lca.state_dict())
    mlka = PlainMaskedAttention(dim, heads).to(weight)
    mlka.load_state_dict(layer.mlka.state_dict())
    layer.lca, layer.mlka = lca, mlka


def plain_layer(layer: RLRLayer, height: int, width: int, window: int) -> RLRLayer:
    """A copy of one layer on an `height` x `width` map whose attentions are the plain ones."""
    plain = copy.deepcopy(layer)
    local = window_mask(height, width, window).to(layer.lca.q_proj.weight.device)
    _make_plain(plain, local)
    return plain


def plain_reference(model: RLR) -> RLR:
    """A deep copy of `model` whose every layer uses full masked attention with explicit softmax.

    LCA runs once per reference over the full (HW, HW) window mask, MLKA over the full far mask
    the level already holds; everything else (embeddings, fusion, FFN, norms) is the same code.
    """
    plain = copy.deepcopy(model)
    for level in plain.levels:
        local = window_mask(*level.map_size, level.window).to(level.far_mask.device)
        for layer in level.layers:
            _make_plain(layer, local)
    return plain
