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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlr.atomic import write_text
from rlr.errors import ConfigError, DataError, RlrError
from rlr.predict import images_under

if TYPE_CHECKING:
    from rlr.inference import Model

THRESHOLDS_NAME = "thresholds.json"
THRESHOLDS_FORMAT = 1
DEFAULT_QUANTILE = 0.99
INTERPOLATION = "higher"


@dataclass
class Thresholds:
    """A global threshold and optional per-class ones; `for_class` picks the one that applies."""

    global_threshold: float
    per_class: dict[str, float] = field(default_factory=dict)

    def for_class(self, class_name: str | None) -> float:
        return self.per_class.get(class_name, self.global_threshold) if class_name else self.global_threshold


def quantile_threshold(scores: np.ndarray, quantile: float) -> float:
    """The q-quantile of normal scores, 'higher' rule: an observed score, never an interpolation."""
    if len(scores) == 0:
        raise DataError("no normal image scores to calibrate on")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), quantile, method=INTERPOLATION))


def resolve_quantile(quantile: float | None, fpr: float | None) -> float:
    """One number from either option: a quantile q, or a target false-positive rate 1 - q."""
    if quantile is not None and fpr is not None:
        raise ConfigError("give either a quantile or a target false-positive rate, not both")
    q = DEFAULT_QUANTILE if quantile is None and fpr is None else (quantile if quantile is not None else 1.0 - fpr)
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"quantile must lie in (0, 1] (false-positive rate in [0, 1)), got {q:g}")
    return q


def normal_folders(normal_dir: Path, class_names: list[str]) -> dict[str | None, Path]:
    """Which folder holds each class's normal images; {None: normal_dir} when no class folder exists.

    A class folder is `<dir>/<class>/train/good` (MVTec layout) when that exists, else `<dir>/<class>/`.
    """
    if not normal_dir.is_dir():
        raise DataError(f"{normal_dir}: normal image folder not found")
    folders: dict[str | None, Path] = {}
    for name in class_names:
        folder = normal_dir / name
        if (folder / "train" / "good").is_dir():
            folders[name] = folder / "train" / "good"
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
    from rlr.engine.build import build_split

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


def read_thresholds(run_dir: str | Path, checkpoint_digest: str) -> Thresholds | None:
    """The run's thresholds, or None when not calibrated; thresholds of another checkpoint are refused."""
    path = Path(run_dir) / THRESHOLDS_NAME
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        thresholds = Thresholds(
            float(payload["global"]["threshold"]),
            {name: float(entry["threshold"]) for name, entry in payload["per_class"].items()},
        )
    except (ValueError, KeyError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"{path}: not a readable thresholds file ({problem}); rerun rlr calibrate") from None
    if payload.get("checkpoint_sha256") != checkpoint_digest:
        raise ConfigError(f"{path}: calibrated for another checkpoint than this run's last.pt; rerun rlr calibrate")
    return thresholds
