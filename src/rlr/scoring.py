"""Turn (features, reconstruction) into anomaly maps and image scores, as method.md defines.

Per token: mean over channels of (F - F_hat)^2 plus (1 - cos(F, F_hat)); each level's map is
upsampled bilinearly (align_corners=True) to the image size and the levels are averaged.
Image score: the maximum of the map after a Gaussian filter (sigma 4 in the paper).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def level_score(features: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) x2 -> (B, h, w): squared error averaged over channels plus cosine distance."""
    squared = (features - reconstruction).pow(2).mean(dim=1)
    cosine = F.cosine_similarity(features, reconstruction, dim=1)
    return squared + (1.0 - cosine)


def anomaly_map(
    features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor], image_size: int
) -> torch.Tensor:
    """Average of the per-level scores upsampled to (B, image_size, image_size)."""
    maps = [
        F.interpolate(level_score(f, r)[:, None], size=(image_size, image_size), mode="bilinear", align_corners=True)
        for f, r in zip(features, reconstructions)
    ]
    return torch.stack(maps).mean(dim=0)[:, 0]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of (B, H, W) maps, kernel radius 4 sigma, reflected borders.

    Matches scipy.ndimage.gaussian_filter's defaults (truncate=4, mode='reflect') so the
    image score is the same whichever library a user checks it with.
    """
    if sigma <= 0:
        return maps
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]
    # scipy's 'reflect' repeats the edge sample (d c b a | a b c d); torch calls that 'symmetric',
    # which F.pad lacks, so build it from flips.
    x = _pad_symmetric(x, radius)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def _pad_symmetric(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dims by mirroring including the edge sample (scipy 'reflect')."""
    if pad > min(x.shape[-2:]):
        raise ValueError(f"Gaussian radius {pad} exceeds the {tuple(x.shape[-2:])} map; lower the sigma")
    left, right = x[..., :pad].flip(-1), x[..., -pad:].flip(-1)
    x = torch.cat([left, x, right], dim=-1)
    top, bottom = x[..., :pad, :].flip(-2), x[..., -pad:, :].flip(-2)
    return torch.cat([top, x, bottom], dim=-2)


def image_scores(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) -> (B,): the maximum of each map after Gaussian smoothing."""
    return gaussian_blur(maps, sigma).flatten(1).amax(dim=1)
