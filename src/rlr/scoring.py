"""Turn (features, reconstruction) into anomaly maps and image scores, as method.md defines.

RLR: per token, mean over channels of (F - F_hat)^2 plus (1 - cos(F, F_hat)); each level's map
is upsampled bilinearly (align_corners=True) to the image size and the levels are averaged; the
image score is the maximum of the map after a Gaussian filter (sigma 4 in the paper), or the mean of
its top q % (Dinomaly's choice, `eval.image_score_top_percent`).
UniAD: per token, the L2 norm of F - F_hat; the image score is the maximum of the map after a
k x k average pooling (k = 16 at 224 px in UniAD's release). A `ScoringRule` holds either recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from rlr.models.losses import cosine_distance

MAP_SCORES = ("mse_cos", "l2", "cosine")
IMAGE_SCORES = ("gaussian_max", "mean_pool_max")


def level_score(features: torch.Tensor, reconstruction: torch.Tensor, kind: str = "mse_cos") -> torch.Tensor:
    """(B, C, h, w) x2 -> (B, h, w): 'mse_cos' (RLR), 'l2', the Euclidean distance (UniAD), or 'cosine'.

    'cosine' is the cosine distance alone (Dinomaly's map): blind to a feature's length, so channels
    with large activations do not dominate the map.
    """
    if kind == "l2":
        return (features - reconstruction).pow(2).sum(dim=1).sqrt()
    distance = cosine_distance(reconstruction, features)
    if kind == "cosine":
        return distance
    return (features - reconstruction).pow(2).mean(dim=1) + distance


def anomaly_map(
    features: Sequence[torch.Tensor],
    reconstructions: Sequence[torch.Tensor],
    image_size: int,
    kind: str = "mse_cos",
) -> torch.Tensor:
    """Average of the per-level scores upsampled to (B, image_size, image_size)."""
    maps = [
        F.interpolate(
            level_score(f, r, kind)[:, None], size=(image_size, image_size), mode="bilinear", align_corners=True
        )
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


def image_scores(maps: torch.Tensor, sigma: float, top_percent: float = 0.0) -> torch.Tensor:
    """(B, H, W) -> (B,): the maximum of each map after Gaussian smoothing, or the mean of its top q %.

    The top-q mean (Dinomaly scores the top 1 %) is steadier than one pixel on noisy maps and on
    large defects; it takes at least one pixel, so q -> 0 is the maximum itself.
    """
    smoothed = gaussian_blur(maps, sigma).flatten(1)
    if top_percent <= 0:
        return smoothed.amax(dim=1)
    count = max(1, math.ceil(smoothed.shape[1] * top_percent / 100.0))
    return smoothed.topk(count, dim=1).values.mean(dim=1)


def mean_pool_scores(maps: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, H, W) -> (B,): the maximum of each map after a `pool` x `pool` average (stride 1, no padding)."""
    if pool > min(maps.shape[-2:]):
        raise ValueError(f"image-score pool {pool} exceeds the {tuple(maps.shape[-2:])} map")
    return F.avg_pool2d(maps[:, None], pool, stride=1).flatten(1).amax(dim=1)


@dataclass(frozen=True)
class ScoringRule:
    """How a run turns (features, reconstructions) into pixel maps and image scores."""

    map_score: str = "mse_cos"  # one of MAP_SCORES
    image_score: str = "gaussian_max"  # one of IMAGE_SCORES
    image_score_sigma: float = 4.0
    image_score_top_percent: float = 0.0
    image_score_pool: int = 16
    pixel_map_sigma: float = 0.0

    def raw_maps(
        self, features: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor], image_size: int
    ) -> torch.Tensor:
        """Unsmoothed maps (B, S, S): the input of both `image_scores` and `pixel_maps`."""
        return anomaly_map(features, reconstructions, image_size, self.map_score)

    def image_scores(self, raw: torch.Tensor) -> torch.Tensor:
        if self.image_score == "mean_pool_max":
            return mean_pool_scores(raw, self.image_score_pool)
        return image_scores(raw, self.image_score_sigma, self.image_score_top_percent)

    def pixel_maps(self, raw: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(raw, self.pixel_map_sigma)

    def describe(self) -> dict[str, object]:
        """The rule in words, for the protocol written beside every table."""
        token = {
            "l2": "L2 norm of F - F_hat",
            "cosine": "cosine distance (1 - cosine)",
            "mse_cos": "mean squared error + (1 - cosine)",
        }[self.map_score]
        if self.image_score == "mean_pool_max":
            image = f"max of the map after a {self.image_score_pool}x{self.image_score_pool} average pooling"
        elif self.image_score_top_percent > 0:
            image = (
                f"mean of the top {self.image_score_top_percent:g} % of the map after a Gaussian filter, "
                f"sigma {self.image_score_sigma}"
            )
        else:
            image = f"max of the map after a Gaussian filter, sigma {self.image_score_sigma}"
        return {
            "map": f"per-level {token}, upsampled bilinearly (align_corners=True), averaged over levels",
            "pixel_map_sigma": self.pixel_map_sigma,
            "image_score": image,
        }
