"""Multi-head attention restricted by a spatial mask, and the masks RLR needs.

Both RLR attentions work on a row-major flattened h x w token grid. LCA lets a position see only
the reference inside a w x w window around it; MLKA lets it see everything EXCEPT that window.
The masks depend only on the grid and window sizes, so they are built once and kept as buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_mask(height: int, width: int, window: int) -> torch.Tensor:
    """Boolean (HW, HW) mask: True where key j lies in the `window` x `window` box centred on query i.

    The box is clipped at the borders (positions outside the grid simply do not exist).
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"attention window must be a positive odd number, got {window}")
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    half = window // 2
    near_rows = (rows[:, None] - rows[None, :]).abs() <= half
    near_cols = (cols[:, None] - cols[None, :]).abs() <= half
    return near_rows & near_cols


class MaskedAttention(nn.Module):
    """Multi-head attention whose (HW, HW) boolean mask says which keys each query may see.

    Keys and values may carry a batch dimension of 1 (a shared reference), which is broadcast
    over the queries' batch without copying. Without a mask every query sees every key, and the
    keys may then be more or fewer than the queries.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        return x.view(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        """query (B, N, d); key, value (B or 1, M, d); allowed (N, M) bool or None (all) -> (B, N, d)."""
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        batch = q.shape[0]
        k = k.expand(batch, -1, -1, -1)
        v = v.expand(batch, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(query.shape))


def window_neighbours(height: int, width: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every position, the flat indices of the w x w box around it and which of them exist.

    Returns index (HW, w*w) long and valid (HW, w*w) bool; boxes clipped at the border point
    their missing slots at position 0 and mark them invalid.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"attention window must be a positive odd number, got {window}")
    half = window // 2
    offsets = torch.arange(-half, half + 1)
    rows = torch.arange(height)[:, None, None, None] + offsets[None, None, :, None]
    cols = torch.arange(width)[None, :, None, None] + offsets[None, None, None, :]
    rows, cols = torch.broadcast_tensors(rows, cols)  # (H, W, w, w)
    valid = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    index = torch.where(valid, rows * width + cols, torch.zeros_like(rows))
    return index.reshape(height * width, -1), valid.reshape(height * width, -1)


class WindowAttention(MaskedAttention):
    """Attention of each query to the keys in its w x w window only: cost HW * w^2, not (HW)^2.

    Keys and values are shared by the whole batch (LCA's reference), which lets the batch fold
    into each position's small matrix product instead of copying the windows per sample. Gives
    the same result as `MaskedAttention` with `window_mask` and has the same parameters.
    """

    def forward(  # type: ignore[override]
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """query (B, N, d); key, value (1, N, d); index, valid (N, w*w) -> (B, N, d)."""
        if key.shape[0] != 1 or value.shape[0] != 1:
            raise ValueError("window attention takes keys and values shared by the batch (batch size 1)")
        q = self._split_heads(self.q_proj(query)).permute(1, 2, 0, 3)  # (h, N, B, dh)
        k = self._split_heads(self.k_proj(key))[0][:, index]  # (h, N, w*w, dh)
        v = self._split_heads(self.v_proj(value))[0][:, index]
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (h, N, B, w*w)
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1), v)  # (h, N, B, dh)
        return self.out_proj(out.permute(2, 1, 0, 3).reshape(query.shape))
