"""Exact anomaly-detection metrics: image and pixel AUROC / AP / F1-max, AUPRO, and their mean.

Every curve is the exact one: a point for every distinct score (ties form one point, as in
sklearn's ``roc_curve`` / ``precision_recall_curve`` with ``drop_intermediate=False``), never a
threshold grid. Definitions, with P positives, N negatives and a threshold t classifying
``score >= t`` as anomalous:

- AUROC: trapezoidal area under the ROC curve through (0, 0) and one point per distinct score.
  Equals the Mann-Whitney statistic  sum over positives of (#negatives below + #ties / 2) / (P N),
  which is how it is computed, in exact integer arithmetic.
- AP: sum over distinct thresholds of (R_n - R_{n-1}) * P_n (sklearn's step definition, not
  the trapezoid), with R_0 = 0.
- F1-max: the maximum over distinct thresholds of 2 PR / (P + R) = 2 TP / (TP + FP + P).
- AUPRO: regions are the 8-connected components of each image's mask (two pixels touching at a
  corner belong to one region), labelled once per mask. FPR(t) = fraction of all normal pixels
  (over all images) scoring >= t; PRO(t) = mean over all regions (all images) of the fraction of
  the region's pixels scoring >= t. The curve runs from (0, 0) through (FPR(t), PRO(t)) for every
  distinct t; PRO is integrated over FPR with the trapezoid rule up to ``pro_fpr_limit``, the
  curve being linearly interpolated at exactly that FPR, and the area is divided by the limit,
  so a perfect detector scores 1.0.
- mAD: the mean of the requested metrics that are defined.

How it is computed: the scores are split into positives and negatives once, the negatives
sorted once (``np.sort``, in place) and every positive located among them by binary search.
Each curve point, and hence every metric above including AUPRO (where each positive pixel adds
1 / (|its region| * n_regions) to PRO when it turns positive), follows from those ranks, so the
four pixel metrics share one sort and no int64 argsort of the full pixel set is ever built: on
MVTec-sized data (113 M pixels) the working memory stays near one float copy of the maps.
Scores are used in the dtype given (pass float32 maps to halve memory); they are not cast, since
casting can create or break ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

METRIC_NAMES = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO")
IMAGE_METRICS = METRIC_NAMES[:3]
PIXEL_METRICS = METRIC_NAMES[3:]

# In-plane 8-connectivity with no links between stacked masks: one `label` call labels every mask.
_EIGHT_CONNECTED_PER_MASK = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_MASK[1] = True


@dataclass(frozen=True)
class _Ranking:
    """Positives located among the sorted negatives: everything every curve needs."""

    pos: np.ndarray  # positive scores, ascending
    below: np.ndarray  # per positive: number of negatives with a strictly lower score (int64)
    below_eq: np.ndarray  # per positive: number of negatives with a lower or equal score (int64)
    neg: np.ndarray  # negative scores, ascending
    weights: np.ndarray | None  # per positive (same order): AUPRO weight 1 / (|region| n_regions)

    @property
    def n_pos(self) -> int:
        return int(self.pos.size)

    @property
    def n_neg(self) -> int:
        return int(self.neg.size)


def _rank(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> _Ranking:
    """Sort the negatives once and binary-search every positive among them."""
    pos = scores[positive]
    neg = scores[~positive]
    neg.sort()
    if weights is None:
        pos.sort()
    else:
        order = np.argsort(pos)
        pos, weights = pos[order], weights[order]
    below = np.searchsorted(neg, pos, side="left")
    below_eq = np.searchsorted(neg, pos, side="right")
    return _Ranking(pos, below, below_eq, neg, weights)


def _positive_thresholds(r: _Ranking) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positives at, TP, FP) for each distinct positive score: the only points where TP moves."""
    first = np.ones(r.n_pos, dtype=bool)
    first[1:] = r.pos[1:] != r.pos[:-1]
    starts = np.flatnonzero(first)
    counts = np.diff(starts, append=r.n_pos)
    tp = r.n_pos - starts
    fp = r.n_neg - r.below[starts]
    return counts, tp, fp


def _auroc(r: _Ranking) -> float | None:
    if r.n_pos == 0 or r.n_neg == 0:
        return None
    twice_u = int(r.below.sum(dtype=np.int64)) + int(r.below_eq.sum(dtype=np.int64))
    return twice_u / (2 * r.n_pos * r.n_neg)


def _average_precision(r: _Ranking) -> float | None:
    if r.n_pos == 0:
        return None
    counts, tp, fp = _positive_thresholds(r)
    return float(np.sum(counts * (tp / (tp + fp))) / r.n_pos)


def _f1_max(r: _Ranking) -> float | None:
    # Between two distinct positive scores TP is constant and FP only grows as t falls, so the
    # maximum over all distinct thresholds is attained at a positive score.
    if r.n_pos == 0:
        return None
    _, tp, fp = _positive_thresholds(r)
    return float(np.max(2 * tp / (tp + fp + r.n_pos)))


def _aupro(r: _Ranking, fpr_limit: float) -> float | None:
    """Normalised area under PRO(FPR) up to `fpr_limit`, from the ranks (see module docstring).

    Only negatives move FPR, so the area is a sum over groups of tied negatives u, each adding
    (its count / N) * (PRO(> u) + PRO(>= u)) / 2. Groups wholly below the limit are summed per
    positive pixel (pixel p is counted by every negative group u < p, half by u == p); the group
    that straddles the limit is cut at FPR = fpr_limit by linear interpolation.
    """
    assert r.weights is not None
    n_neg = r.n_neg
    if r.n_pos == 0 or n_neg == 0:
        return None
    k = min(n_neg, max(1, math.ceil(fpr_limit * n_neg)))
    cut = r.neg[n_neg - k]  # the k-th highest normal score: its group straddles the limit
    lo = int(np.searchsorted(r.neg, cut, side="left"))
    hi = int(np.searchsorted(r.neg, cut, side="right"))
    # Of the negatives above `cut` (r.neg[hi:]), pixel p scores strictly above below - hi and at
    # or above below_eq - hi; both are 0 when p is not above `cut`.
    above_gt = np.maximum(r.below - hi, 0)
    above_ge = np.maximum(r.below_eq - hi, 0)
    area = float(np.dot(r.weights, above_gt + above_ge)) / (2 * n_neg)
    pro_before = float(r.weights[np.searchsorted(r.pos, cut, side="right") :].sum())
    pro_after = float(r.weights[np.searchsorted(r.pos, cut, side="left") :].sum())
    fpr_before, fpr_after = (n_neg - hi) / n_neg, (n_neg - lo) / n_neg
    step = fpr_limit - fpr_before
    pro_at_limit = pro_before + (pro_after - pro_before) * step / (fpr_after - fpr_before)
    area += step * (pro_before + pro_at_limit) / 2
    return area / fpr_limit


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Per positive pixel (in C order): 1 / (|its 8-connected region| * number of regions)."""
    regions, n_regions = ndimage.label(masks, structure=_EIGHT_CONNECTED_PER_MASK)
    ids = regions[masks]
    del regions
    sizes = np.bincount(ids)
    return 1.0 / (sizes[ids] * float(n_regions))


# ----------------------------------------------------------------------------------- validation


def _scores(x: np.ndarray, name: str) -> np.ndarray:
    """The scores as an array; NaN or inf would make every rank meaningless, so refuse them."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        bad = x.size - np.count_nonzero(np.isfinite(x))
        if bad:
            raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf) out of {x.size}")
    return x


def _labels(y: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Strict 0/1 labels as bool: any other value is a caller bug, not a class."""
    y = np.asarray(y)
    if y.shape != shape:
        raise ValueError(f"{name} has shape {y.shape}, the scores have shape {shape}")
    if y.dtype == bool:
        return y
    if np.any((y != 0) & (y != 1)):
        raise ValueError(f"{name} must contain only 0 and 1 (or bool)")
    return y == 1


def _masks(masks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Masks binarised at > 0 (so 0/255 images work), matching the data pipeline's rule."""
    masks = np.asarray(masks)
    if masks.shape != shape:
        raise ValueError(f"masks have shape {masks.shape}, the maps have shape {shape}")
    return masks if masks.dtype == bool else masks > 0


def _maps(maps: np.ndarray) -> np.ndarray:
    maps = _scores(maps, "maps")
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {maps.shape}")
    return maps


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"pro_fpr_limit must be in (0, 1], got {fpr_limit}")


# ----------------------------------------------------------------------------------- public API


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Exact ROC AUC of `scores` (any shape) against 0/1 `labels`; None without both classes."""
    scores = _scores(scores, "scores")
    return _auroc(_rank(scores, _labels(labels, "labels", scores.shape)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Exact AP, sum (R_n - R_{n-1}) P_n over distinct thresholds; None without positives."""
    scores = _scores(scores, "scores")
    return _average_precision(_rank(scores, _labels(labels, "labels", scores.shape)))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Exact maximum F1 over all distinct thresholds; None without positives."""
    scores = _scores(scores, "scores")
    return _f1_max(_rank(scores, _labels(labels, "labels", scores.shape)))


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Exact AUPRO of (N, H, W) maps against masks (binarised at > 0), normalised by `fpr_limit`.

    Regions are 8-connected components of each mask. None when the masks have no positive or no
    negative pixel (PRO or FPR undefined).
    """
    return _pixel_metrics(maps, masks, ("AUPRO",), fpr_limit)["AUPRO"]


def _image_metrics(scores: np.ndarray, labels: np.ndarray, wanted: Sequence[str]) -> dict[str, float | None]:
    """Image metrics; all None unless both classes occur (a one-class split measures nothing)."""
    scores = _scores(scores, "image_scores")
    if scores.ndim != 1:
        raise ValueError(f"image_scores must be 1-D, got shape {scores.shape}")
    r = _rank(scores, _labels(labels, "image_labels", scores.shape))
    defined = r.n_pos > 0 and r.n_neg > 0
    compute = {"I-AUROC": _auroc, "I-AP": _average_precision, "I-F1max": _f1_max}
    return {name: compute[name](r) if defined else None for name in wanted}


def _pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, wanted: Sequence[str], fpr_limit: float
) -> dict[str, float | None]:
    """Pixel metrics from one shared ranking of all pixels; None where a class is missing."""
    _check_limit(fpr_limit)
    maps = _maps(maps)
    masks = _masks(masks, maps.shape)
    if not masks.any():
        return {name: None for name in wanted}
    weights = _region_weights(masks) if "AUPRO" in wanted else None
    r = _rank(maps, masks, weights)
    compute = {
        "P-AUROC": _auroc,
        "P-AP": _average_precision,
        "P-F1max": _f1_max,
        "AUPRO": lambda ranking: _aupro(ranking, fpr_limit),
    }
    return {name: compute[name](r) for name in wanted}


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def compute_metrics(
    image_scores: np.ndarray,
    image_labels: np.ndarray,
    maps: np.ndarray | None,
    masks: np.ndarray | None,
    pro_fpr_limit: float = 0.3,
    metrics: Sequence[str] = METRIC_NAMES,
) -> dict[str, float | None]:
    """One class's requested metrics plus "mAD", the mean of those that are defined.

    image_scores/image_labels: (N,) scores and 0/1 labels. maps/masks: (N, H, W) scores and masks
    (binarised at > 0). Every requested name is a key; a metric is None when undefined: image
    metrics without both normal and defective images, pixel metrics when maps is None or no mask
    pixel is positive, P-AUROC and AUPRO when no pixel is negative. Inputs a requested metric does
    not use are not validated. Raises ValueError on unknown names, shape mismatches and NaN/inf.
    """
    wanted = list(dict.fromkeys(metrics))
    unknown = [name for name in wanted if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
    image_wanted = [name for name in wanted if name in IMAGE_METRICS]
    pixel_wanted = [name for name in wanted if name in PIXEL_METRICS]

    results: dict[str, float | None] = {}
    if image_wanted:
        results.update(_image_metrics(image_scores, image_labels, image_wanted))
    if pixel_wanted and maps is not None:
        if masks is None:
            raise ValueError("masks are required when maps are given")
        if image_wanted and np.shape(maps)[:1] != np.shape(image_scores)[:1]:
            raise ValueError(f"maps hold {np.shape(maps)[:1]} images, image_scores {np.shape(image_scores)[:1]}")
        results.update(_pixel_metrics(maps, masks, pixel_wanted, pro_fpr_limit))
    out = {name: results.get(name) for name in wanted}
    out["mAD"] = _mean_defined(list(out.values()))
    return out


def mean_over_classes(
    per_class: Mapping[str, Mapping[str, float | None]],
) -> dict[str, float | None]:
    """The table's mean row: per metric the mean over classes where it is defined, then mAD."""
    names = [name for name in METRIC_NAMES if any(name in row for row in per_class.values())]
    out = {name: _mean_defined([row.get(name) for row in per_class.values()]) for name in names}
    out["mAD"] = _mean_defined(list(out.values()))
    return out
