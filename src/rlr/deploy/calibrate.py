"""Accept/reject thresholds from held-out NORMAL images only, stored in the run as thresholds.json.

Method: the threshold is the q-quantile of the image scores of normal images (default q = 0.99,
or q = 1 - target false-positive rate), taken with numpy's 'higher' rule, so it is always one of
the observed scores and at most a fraction 1 - q of the calibration images lies above it. An
image is anomalous when its score is strictly greater than the threshold. One threshold per
class that has its own normal folder, and a global one over all the normal images; a class
without its own threshold uses the global one. No test image and no label is ever read.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rlr.atomic import write_text
from rlr.deploy.inputs import images_under
from rlr.deploy.model import Model
from rlr.deploy.thresholds import (
    INTERPOLATION,
    THRESHOLDS_FORMAT,
    THRESHOLDS_NAME,
    quantile_threshold,
    resolve_quantile,
)
from rlr.engine.build import build_split
from rlr.errors import DataError, RlrError


def normal_folders(normal_dir: Path, class_names: list[str]) -> dict[str | None, Path]:
    """Which folder holds each class's normal images; {None: normal_dir} when no class folder exists.

    A class folder is `<dir>/<class>/train/good` (MVTec layout) or `<dir>/<class>/good` (own data)
    when that exists, else `<dir>/<class>/`.
    """
    if not normal_dir.is_dir():
        raise DataError(f"{normal_dir}: normal image folder not found")
    folders: dict[str | None, Path] = {}
    for name in class_names:
        folder = normal_dir / name
        if (folder / "train" / "good").is_dir():
            folders[name] = folder / "train" / "good"
        elif (folder / "good").is_dir():
            folders[name] = folder / "good"
        elif folder.is_dir():
            folders[name] = folder
    return folders or {None: normal_dir}


def calibrate(
    model: Model,
    normal_dir: str | Path,
    quantile: float | None = None,
    fpr: float | None = None,
    batch_size: int | None = None,
) -> dict:
    """Score the normal images, write `thresholds.json` into the model's run and return its content.

    Stops at the first unreadable image (fix it or move it away: a threshold from a partial set
    would be silently different).
    """
    q = resolve_quantile(quantile, fpr)
    normal_dir = Path(normal_dir)
    folders = normal_folders(normal_dir, model.class_names)
    scores: dict[str | None, np.ndarray] = {}
    for name, folder in folders.items():
        files = images_under(folder)
        if not files:
            raise DataError(f"{folder}: no image files found for calibration")
        results = model.predict(files, batch_size=batch_size, progress=f"calibrate {name or 'all'}")
        scores[name] = np.array([r.score for r in results])
    every = np.concatenate(list(scores.values()))
    per_class = {name: _summary(s, q) for name, s in scores.items() if name is not None}
    payload = {
        "format": THRESHOLDS_FORMAT,
        "method": "quantile of normal image scores",
        "quantile": q,
        "target_false_positive_rate": 1.0 - q,
        "interpolation": f"numpy '{INTERPOLATION}' (an observed score)",
        "decision": "anomalous when score > threshold",
        "score": model.score_description,
        "global": _summary(every, q),
        "per_class": per_class,
        "normal_dir": str(normal_dir.resolve()),
        "images_also_in_training": _training_overlap(model, folders),
        "checkpoint_sha256": model.checkpoint_digest,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if len(every) * (1.0 - q) < 1.0:
        print(
            f"rlr: warning: {len(every)} normal images are too few for quantile {q:g}: "
            "the threshold is their maximum score",
            file=sys.stderr,
        )
    write_text(Path(model.run_dir) / THRESHOLDS_NAME, json.dumps(payload, indent=2) + "\n")
    return payload


def _summary(scores: np.ndarray, q: float) -> dict:
    return {
        "threshold": quantile_threshold(scores, q),
        "n_images": len(scores),
        "min_score": float(scores.min()),
        "max_score": float(scores.max()),
    }


def _training_overlap(model: Model, folders: dict[str | None, Path]) -> int | None:
    """How many calibration images the model was trained on (their scores run low); None if unknown."""
    try:
        trained = {Path(r.image_path).resolve() for r in build_split(model.config).train}
    except RlrError:
        return None
    used = {p.resolve() for folder in folders.values() for p in images_under(folder)}
    overlap = len(used & trained)
    if overlap:
        print(
            f"rlr: warning: {overlap} of the normal images were used for training; "
            "their scores are optimistic, so the thresholds will be too low (use held-out images)",
            file=sys.stderr,
        )
    return overlap
