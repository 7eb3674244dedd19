"""Feature jitter (UniAD's, which RLR reuses): the noisy training input a reconstructor must undo."""

from __future__ import annotations

import torch


def feature_jitter(features: torch.Tensor, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """F + J with J = eps * (||F_t|| / C) * scale per token t, eps ~ N(0, I): the training input."""
    channels = features.shape[1]
    token_norm = features.norm(dim=1, keepdim=True)
    noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
    return features + noise * (token_norm / channels) * scale
