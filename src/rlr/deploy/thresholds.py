"""The thresholds file of a run (thresholds.json): how a threshold is taken, and reading it back.

Kept apart from `calibrate` (which scores images with a loaded model) because loading a model
reads this file: the model needs it, and calibration needs the model. It imports nothing of
`deploy`, so the report (which shows the decisions a threshold makes) reads it too.

Format 2 adds a pixel threshold beside each image threshold (for `rlr predict --masks`);
format-1 files still load, with no pixel thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlr.errors import ConfigError, DataError
from rlr.results import Thresholds

THRESHOLDS_NAME = "thresholds.json"
THRESHOLDS_FORMAT = 2
DEFAULT_QUANTILE = 0.99
DEFAULT_PIXEL_QUANTILE = 0.999
INTERPOLATION = "higher"
NORMALISED_SCORE = "score / (score + threshold): 0 for a zero score, 0.5 at the threshold, towards 1 above it"


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
    return check_quantile("quantile", q, "false-positive rate in [0, 1)")


def check_quantile(name: str, q: float, also: str | None = None) -> float:
    """`q` when it lies in (0, 1]; else a one-line error naming the option."""
    if not 0.0 < q <= 1.0:
        hint = f" ({also})" if also else ""
        raise ConfigError(f"{name} must lie in (0, 1]{hint}, got {q:g}")
    return q


def normalised_score(score: float, threshold: float | None) -> float | None:
    """A score an operator reads without knowing the scale: 0.5 at the threshold, above 0.5 anomalous.

    score / (score + threshold) for the non-negative distances rlr scores: strictly increasing,
    0 at a zero score, approaching 1. None without a threshold; a threshold of 0 (possible only
    when the normal scores were all exactly 0) gives 1 above it, else 0.
    """
    if threshold is None:
        return None
    if threshold <= 0:
        return 1.0 if score > threshold else 0.0
    score = max(score, 0.0)
    return score / (score + threshold)


def read_calibration(run_dir: str | Path, checkpoint_digest: str) -> dict | None:
    """The run's thresholds.json as written, or None when not calibrated.

    Refused in one line: a file that is not a thresholds file, or one calibrated for another
    checkpoint than the run's last.pt (whose SHA-256 is `checkpoint_digest`).
    """
    path = Path(run_dir) / THRESHOLDS_NAME
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        stored_thresholds(payload, "threshold")
        if payload.get("format", 1) >= 2:
            stored_thresholds(payload, "pixel_threshold")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"{path}: not a readable thresholds file ({problem}); rerun rlr calibrate") from None
    if payload.get("checkpoint_sha256") != checkpoint_digest:
        raise ConfigError(f"{path}: calibrated for another checkpoint than this run's last.pt; rerun rlr calibrate")
    return payload


def read_thresholds(run_dir: str | Path, checkpoint_digest: str) -> Thresholds | None:
    """The run's image thresholds, or None when not calibrated (see `read_calibration`)."""
    payload = read_calibration(run_dir, checkpoint_digest)
    return None if payload is None else stored_thresholds(payload, "threshold")


def read_pixel_thresholds(run_dir: str | Path, checkpoint_digest: str) -> Thresholds | None:
    """The run's pixel thresholds; None when not calibrated, or calibrated before they existed (format 1)."""
    payload = read_calibration(run_dir, checkpoint_digest)
    if payload is None or payload.get("format", 1) < 2:
        return None
    return stored_thresholds(payload, "pixel_threshold")


def stored_thresholds(payload: dict, key: str = "threshold") -> Thresholds:
    """The global and per-class values stored under `key` ('threshold' or 'pixel_threshold')."""
    return Thresholds(
        float(payload["global"][key]),
        {str(name): float(entry[key]) for name, entry in payload["per_class"].items()},
    )
