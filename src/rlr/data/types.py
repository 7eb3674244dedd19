"""The one sample type every dataset returns, and the record that describes a sample on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch

NORMAL, ANOMALOUS = 0, 1


@dataclass(frozen=True)
class ImageRecord:
    """Where one sample lives on disk; cheap to build, so datasets can be listed before loading."""

    image_path: Path
    class_name: str
    label: int  # NORMAL or ANOMALOUS
    defect_type: str = "good"
    mask_path: Path | None = None  # None: an all-zero mask (normal image, or no mask given)


class Sample(TypedDict):
    """What a dataset's __getitem__ returns; torch's default collate batches it."""

    image: torch.Tensor  # float32 (3, H, W) in [0, 1]; the backbone applies its own normalisation
    mask: torch.Tensor  # float32 (1, H, W) with values in {0, 1}
    label: int
    class_name: str
    path: str
