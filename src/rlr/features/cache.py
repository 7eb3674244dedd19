"""On-disk cache of backbone features, so each image goes through the backbone once.

The backbone is frozen and training uses no image augmentation, so an image's features depend
only on the file's bytes and the extractor's settings. An entry's name is a hash of both: any
change (file content, backbone, weights, image size, resize rule, layers, smoothing) gives a new name, so
stale entries are never read. Entries are float16, written atomically; an entry that cannot be
read back (from a crash of an older writer, a full disk, tampering) is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from rlr.atomic import torch_save
from rlr.features.weights import file_digest
from rlr.paths import cache_root

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """`$RLR_CACHE_DIR/features`, else `~/.cache/rlr/features`."""
    return cache_root() / "features"


def extractor_key(
    backbone: str,
    weights_identity: str,
    image_size: int,
    out_indices: Sequence[int],
    smoothing: int,
    merge: bool = False,
    resize: str = "stretch",
) -> str:
    """A stable hash of every extractor setting that changes the features."""
    settings = {
        "format": CACHE_FORMAT,
        "backbone": backbone,
        "weights": weights_identity,
        "image_size": image_size,
        "out_indices": list(out_indices),
        "smoothing": smoothing,
        **({"merge": True} if merge else {}),  # absent when off, so existing caches stay valid
        **({"resize": resize} if resize != "stretch" else {}),  # likewise
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    """Maps an image file to its cached list of per-level float16 feature maps."""

    def __init__(self, root: Path, key: str) -> None:
        self.folder = Path(root) / key

    def entry_path(self, image_path: Path) -> Path:
        digest = file_digest(image_path)
        return self.folder / digest[:2] / f"{digest}.pt"

    def load(self, entry: Path) -> list[torch.Tensor] | None:
        """The cached maps, or None when the entry is absent or unreadable."""
        if not entry.is_file():
            return None
        try:
            maps = torch.load(entry, map_location="cpu", weights_only=True)
        except Exception:  # any unreadable entry is a miss; it will be rewritten atomically
            return None
        if not isinstance(maps, list) or not all(isinstance(m, torch.Tensor) for m in maps):
            return None
        return maps

    def store(self, entry: Path, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Write one image's maps as float16 (atomically) and return what was stored."""
        maps = [m.detach().to("cpu", torch.float16).contiguous() for m in maps]
        torch_save(maps, entry)
        return maps
