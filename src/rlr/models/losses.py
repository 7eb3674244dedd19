"""Reconstruction objectives: the paper's MSE + cosine, UniAD's MSE, and a hard-mined cosine.

The hard-mined cosine follows the idea of Dinomaly (Guo et al., CVPR 2025): once most normal
tokens are reconstructed well, their gradient is scaled down so training keeps working on the
hard ones instead of polishing easy ones towards an identity map. The loss VALUE is unchanged
(only gradients are rescaled), so logged losses stay comparable across recipes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("mse", "mse_cos", "cosine")


def cosine_distance(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) x2 -> (B, h, w): 1 - cosine similarity along channels, per token."""
    return 1.0 - F.cosine_similarity(reconstruction, target, dim=1)


def hard_mined(distances: torch.Tensor, fraction: float, factor: float) -> torch.Tensor:
    """The same values, but only the worst `fraction` of them keep their full gradient.

    Every other entry's gradient is multiplied by `factor`; fraction 1 returns `distances` itself.
    """
    if fraction >= 1.0:
        return distances
    flat = distances.detach().flatten()
    threshold = torch.quantile(flat.float(), 1.0 - fraction).to(distances.dtype)
    scaled = distances.detach() + factor * (distances - distances.detach())  # same value, gradient x factor
    return torch.where(distances.detach() < threshold, scaled, distances)


def hard_fraction_at(step: int, final: float, ramp_steps: int) -> float:
    """The share of tokens with full gradient at optimizer step `step` (0-based): 1 falling linearly to `final`."""
    if ramp_steps <= 0:
        return final
    progress = min(1.0, step / ramp_steps)
    return 1.0 - (1.0 - final) * progress


def reconstruction_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    kind: str = "mse_cos",
    hard_fraction: float = 1.0,
    hard_factor: float = 0.1,
) -> torch.Tensor:
    """One level's loss: 'mse', 'mse_cos' (MSE + mean cosine distance) or 'cosine' (mean cosine distance).

    `hard_fraction` < 1 hard-mines the cosine term (see `hard_mined`); 'mse' has none to mine.
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown loss '{kind}' (known: {', '.join(LOSSES)})")
    if kind == "mse":
        return F.mse_loss(reconstruction, target)
    cosine = hard_mined(cosine_distance(reconstruction, target), hard_fraction, hard_factor).mean()
    if kind == "cosine":
        return cosine
    return F.mse_loss(reconstruction, target) + cosine
