"""Features for a list of images: read from the cache, compute (in batches) and store the misses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from rlr.data.dataset import ImageDataset
from rlr.data.types import ImageRecord
from rlr.features.backbone import FeatureExtractor
from rlr.features.cache import FeatureCache


@dataclass
class ExtractionStats:
    """How many images came from the cache and how many went through the backbone."""

    cached: int = 0
    computed: int = 0


def extract_features(
    records: Sequence[ImageRecord],
    extractor: FeatureExtractor,
    cache: FeatureCache,
    image_size: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    desc: str = "features",
    resize: str = "stretch",
) -> tuple[list[torch.Tensor], ExtractionStats]:
    """Per level, a float16 tensor (N, C, h, w) in the order of `records`.

    Each computed batch is stored before the next starts, so an interrupted run keeps
    everything finished so far.
    """
    entries = [cache.entry_path(Path(r.image_path)) for r in records]
    found = [cache.load(e) for e in entries]
    missing = [i for i, maps in enumerate(found) if maps is None]
    stats = ExtractionStats(cached=len(records) - len(missing), computed=len(missing))
    if missing:
        dataset = Subset(ImageDataset(list(records), image_size, resize), missing)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
        extractor.to(device)
        position = 0
        with tqdm(total=len(missing), desc=desc, unit="img", leave=False) as bar:
            for batch in loader:
                maps = extractor(batch["image"].to(device))
                for row in range(len(batch["path"])):
                    index = missing[position]
                    found[index] = cache.store(entries[index], [m[row] for m in maps])
                    position += 1
                bar.update(len(batch["path"]))
    levels = len(found[0]) if found else 0
    stacked = [torch.stack([maps[level] for maps in found]) for level in range(levels)]
    return stacked, stats
