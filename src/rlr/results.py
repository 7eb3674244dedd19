"""Result types shared by the engine (which makes them), the report (which renders them) and deploy.

They sit below all three and import none of them, so no module needs a type from a module that
imports it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rlr.data.transforms import map_onto_image
from rlr.data.types import ImageRecord


@dataclass
class ClassResult:
    """Everything the test produced for one class: kept in memory for reports and figures."""

    records: list[ImageRecord]
    scores: np.ndarray  # (N,) image scores
    maps: np.ndarray  # (N, H, W) float32 pixel maps as used for pixel metrics
    masks: np.ndarray  # (N, H, W) bool ground truth
    metrics: dict[str, float | None]


@dataclass
class Thresholds:
    """A global threshold and optional per-class ones; `for_class` picks the one that applies."""

    global_threshold: float
    per_class: dict[str, float] = field(default_factory=dict)

    def for_class(self, class_name: str | None) -> float:
        return self.per_class.get(class_name, self.global_threshold) if class_name else self.global_threshold


@dataclass
class PredictionResult:
    """The model's verdict on one image.

    `map` is at the model's image size (S x S, the image placed in the square by `resize`, the
    run's data.resize); `map_at_original_size()` puts it back onto the input's own pixels.
    """

    score: float
    map: np.ndarray  # (S, S) float32
    threshold: float | None
    class_name: str | None
    original_size: tuple[int, int]  # (width, height)
    path: str | None = None
    resize: str = "stretch"  # how the image was placed in the S x S square (data.resize)

    @property
    def anomalous(self) -> bool | None:
        """True above the threshold, False at or below it, None when the run is not calibrated."""
        return None if self.threshold is None else self.score > self.threshold

    @property
    def decision(self) -> str:
        """'anomalous', 'normal', or '' without a threshold."""
        return {None: "", True: "anomalous", False: "normal"}[self.anomalous]

    def map_at_original_size(self) -> np.ndarray:
        """The map on the input's own pixel grid, (height, width)."""
        return self.map_resized(*self.original_size)

    def map_resized(self, width: int, height: int) -> np.ndarray:
        """The map on the input's grid at (height, width): its placement undone, resized bilinearly (antialiased, as images are)."""
        return map_onto_image(torch.from_numpy(self.map), self.original_size, (width, height), self.resize).numpy()
