"""The thresholds file of a run (thresholds.json): how a threshold is taken, and reading it back.

Kept apart from `calibrate` (which scores images with a loaded model) because loading a model
reads this file: the model needs it, and calibration needs the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlr.errors import ConfigError, DataError
from rlr.results import Thresholds

THRESHOLDS_NAME = "thresholds.json"
THRESHOLDS_FORMAT = 1
DEFAULT_QUANTILE = 0.99
INTERPOLATION = "higher"


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
