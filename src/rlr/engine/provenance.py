"""What a run records about how it was made, so a result can be traced and repeated."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import timm
import torch

from rlr.atomic import write_text
from rlr.config import RunConfig
from rlr.data.types import ImageRecord
from rlr.features.weights import file_digest
from rlr.version import __version__


def git_commit() -> str | None:
    """The commit of the rlr source tree when it is a git checkout, else None."""
    source = Path(__file__).resolve().parents[1]  # the package folder
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def data_fingerprint(records: Sequence[ImageRecord]) -> str:
    """SHA-256 over every training image's class, label and content: same data, same fingerprint.

    Names are hashed as the bytes on disk (undecodable bytes come back through surrogateescape).
    """
    digest = hashlib.sha256()
    for record in sorted(records, key=lambda r: (r.class_name, str(r.image_path))):
        line = f"{record.class_name}\t{record.label}\t{file_digest(Path(record.image_path))}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))  # a class folder's name need not be UTF-8
    return digest.hexdigest()


def write_run_info(run_dir: Path, config: RunConfig, records: Sequence[ImageRecord], device: torch.device) -> None:
    info = {
        "seed": config.train.seed,
        "versions": {
            "rlr": __version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "train_images": len(records),
        "data_fingerprint": data_fingerprint(records),
        "config": config.to_dict(),
    }
    write_text(run_dir / "run_info.json", json.dumps(info, indent=2) + "\n")
