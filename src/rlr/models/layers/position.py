"""The fixed 2-D sine/cosine position code of RLR's tokens.

timm has one (`timm.layers.build_sincos2d_pos_embed`), but it is not a drop-in: it orders the
channels y before x, and its frequencies, computed as 1 / 10000^e instead of exp(-e ln 10000),
differ from these in the last float32 bit, which would change every trained number. Runs made
with this code must keep their results, so it stays.
"""

from __future__ import annotations

import math

import torch


def sincos_position_encoding(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine/cosine encoding (HW, dim): the first half of channels encodes x, the second y."""
    if dim % 4:
        raise ValueError(f"hidden width {dim} must be divisible by 4 for the 2-D position encoding")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / quarter)
    xs = torch.arange(width, dtype=torch.float32).repeat(height)[:, None] * freqs
    ys = torch.arange(height, dtype=torch.float32).repeat_interleave(width)[:, None] * freqs
    return torch.cat([xs.sin(), xs.cos(), ys.sin(), ys.cos()], dim=1)
