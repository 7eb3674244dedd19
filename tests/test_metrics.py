"""rlr.metrics against independent references: sklearn, brute force, and cases worked by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from rlr.metrics import (
    METRIC_NAMES,
    aupro,
    auroc,
    average_precision,
    compute_metrics,
    f1_max,
    mean_over_classes,
)

EIGHT = np.ones((3, 3), dtype=bool)


def _tied_scores(rng: np.random.Generator, n: int, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels plus scores that correlate with them and are rounded so that many values tie."""
    labels = rng.random(n) < rng.uniform(0.05, 0.6)
    labels[:2] = [True, False]
    scores = np.round(rng.normal(size=n) + labels * rng.uniform(0, 2), decimals)
    return scores, labels


def _brute_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


def _brute_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Obviously-correct AUPRO: every distinct score is a threshold, overlaps counted directly."""
    regions = [ndimage.label(mask, structure=EIGHT) for mask in masks]
    fpr, pro = [0.0], [0.0]
    normal = ~masks
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        fpr.append((hit & normal).sum() / normal.sum())
        overlaps = [(hit[i][lab == k]).mean() for i, (lab, n) in enumerate(regions) for k in range(1, n + 1)]
        pro.append(float(np.mean(overlaps)))
    fpr_a, pro_a = np.array(fpr), np.array(pro)
    i = int(np.argmax(fpr_a >= limit))  # first point at or past the limit (the last has FPR 1)
    x0, x1, y0, y1 = fpr_a[i - 1], fpr_a[i], pro_a[i - 1], pro_a[i]
    y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
    xs = np.append(fpr_a[:i], limit)
    ys = np.append(pro_a[:i], y_limit)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2)) / limit


def _blob_data(rng: np.random.Generator, n: int, size: int, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Small maps with random elliptical blobs in about half the masks; rounded scores tie."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if i % 2:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(1, size / 5, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    masks[0, 1, 1] = True  # at least one positive pixel whatever the draw
    maps = np.round(masks * rng.uniform(0.5, 1.5) + rng.normal(0, 0.5, masks.shape), decimals)
    return maps.astype(np.float32), masks


# --------------------------------------------------------------------- agreement with references


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_auroc_and_ap_match_sklearn_with_ties(seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = _tied_scores(rng, int(rng.integers(20, 3000)), decimals)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert f1_max(scores, labels) == pytest.approx(_brute_f1_max(scores, labels), abs=1e-9)


def test_compute_metrics_pixel_metrics_match_sklearn_on_flattened_maps() -> None:
    rng = np.random.default_rng(7)
    maps, masks = _blob_data(rng, 8, 24)
    image_scores = maps.max(axis=(1, 2))
    image_labels = masks.any(axis=(1, 2))
    got = compute_metrics(image_scores, image_labels, maps, masks)
    flat_maps, flat_masks = maps.ravel(), masks.ravel()
    assert got["P-AUROC"] == pytest.approx(roc_auc_score(flat_masks, flat_maps), abs=1e-9)
    assert got["P-AP"] == pytest.approx(average_precision_score(flat_masks, flat_maps), abs=1e-9)
    assert got["P-F1max"] == pytest.approx(_brute_f1_max(flat_maps, flat_masks), abs=1e-9)
    assert got["I-AUROC"] == pytest.approx(roc_auc_score(image_labels, image_scores), abs=1e-9)
    assert got["AUPRO"] == pytest.approx(aupro(maps, masks), abs=1e-12)
    assert list(got) == [*METRIC_NAMES, "mAD"]
    assert got["mAD"] == pytest.approx(np.mean([got[name] for name in METRIC_NAMES]))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("decimals", [1, 3])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed: int, decimals: int, limit: float) -> None:
    rng = np.random.default_rng(100 + seed)
    maps, masks = _blob_data(rng, 6, 20, decimals)
    assert aupro(maps, masks, limit) == pytest.approx(_brute_aupro(maps, masks, limit), abs=1e-9)


# ---------------------------------------------------------------------------- worked by hand


def test_image_metrics_by_hand() -> None:
    # Positives 0.35 and 0.8 are above 1 and 2 of the negatives {0.1, 0.4}: AUROC = 3/4.
    # Thresholds 0.8 (TP 1, FP 0), 0.4 (1, 1), 0.35 (2, 1), 0.1 (2, 2):
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6; F1 = 2TP / (TP + FP + 2): 2/3, 1/2, 4/5, 2/3 -> max 4/5.
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    got = compute_metrics(scores, labels, None, None, metrics=("I-AUROC", "I-AP", "I-F1max"))
    expected = {"I-AUROC": 0.75, "I-AP": 5 / 6, "I-F1max": 0.8}
    assert got == pytest.approx({**expected, "mAD": (0.75 + 5 / 6 + 0.8) / 3})


def _hand_case(b_score: float) -> tuple[np.ndarray, np.ndarray]:
    """One 4x4 image. Region A = {(0,0), (1,1)}: touching at a corner, ONE 8-connected region.
    Region B = {(3,3)}. A scores 0.9 and 0.5, B `b_score`; normal pixels 0.8, 0.6 and 11 x 0.1."""
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[3, 3] = True
    smap = np.full((4, 4), 0.1)
    smap[0, 0], smap[1, 1], smap[3, 3] = 0.9, 0.5, b_score
    smap[0, 1], smap[0, 2] = 0.8, 0.6
    return smap[None], mask[None]


def test_pixel_metrics_by_hand() -> None:
    # 3 positives, 13 negatives. Positives 0.9, 0.7, 0.5 exceed 13, 12, 11 negatives:
    # AUROC = 36 / 39. Thresholds at positives: (TP, FP) = (1, 0), (2, 1), (3, 2):
    # AP = (1 + 2/3 + 3/5) / 3 = 34/45; F1 = 2TP/(TP + FP + 3) = 1/2, 2/3, 3/4 -> 3/4.
    # PRO weights: A pixels 1/(2*2) = 1/4, B 1/(1*2) = 1/2. Curve: (0,0) (0,1/4) (1/13,1/4)
    # (1/13,3/4) (2/13,3/4) (2/13,1) (1,1). Area to FPR 0.3: 1/4 * 1/13 + 3/4 * 1/13
    # + (0.3 - 2/13) * 1 = 0.3 - 1/13, so AUPRO = 1 - 1/(13 * 0.3) = 29/39.
    maps, masks = _hand_case(0.7)
    got = compute_metrics(np.zeros(1), np.zeros(1), maps, masks, metrics=METRIC_NAMES[3:])
    assert got["P-AUROC"] == pytest.approx(36 / 39, abs=1e-12)
    assert got["P-AP"] == pytest.approx(34 / 45, abs=1e-12)
    assert got["P-F1max"] == pytest.approx(3 / 4, abs=1e-12)
    assert got["AUPRO"] == pytest.approx(29 / 39, abs=1e-12)
    # Whole curve (limit 1): 1/4 * 1/13 + 3/4 * 1/13 + 11/13 = 12/13.
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(12 / 13, abs=1e-12)


def test_aupro_by_hand_interpolates_inside_a_tie_at_the_limit() -> None:
    # B now ties with the eleven 0.1 normals. Curve: (0,0) (0,1/4) (1/13,1/4) (2/13,1/4)
    # (2/13,1/2) then ONE diagonal segment to (1,1), crossed at FPR 0.3 where
    # PRO = 1/2 + 1/2 * (0.3 - 2/13) / (11/13).
    # Area = 2 * 1/4 * 1/13 + (0.3 - 2/13) * (1/2 + PRO) / 2.
    maps, masks = _hand_case(0.1)
    pro_03 = 0.5 + 0.5 * (0.3 - 2 / 13) / (11 / 13)
    area = 0.5 / 13 + (0.3 - 2 / 13) * (0.5 + pro_03) / 2
    assert aupro(maps, masks) == pytest.approx(area / 0.3, abs=1e-12)


def test_aupro_uses_eight_connectivity() -> None:
    # With 4-connectivity A would be two regions and all three positives would weigh 1/3.
    maps, masks = _hand_case(0.7)
    assert ndimage.label(masks[0])[1] == 3  # scipy's default (4-connected) sees three
    assert aupro(maps, masks) == pytest.approx(29 / 39, abs=1e-12)


def test_aupro_perfect_and_constant() -> None:
    maps, masks = _hand_case(0.7)
    perfect = np.where(masks, 1.0, 0.0)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    # Constant maps: a single diagonal from (0,0) to (1,1); area to 0.3 is 0.045 -> 0.15.
    assert aupro(np.zeros_like(maps), masks) == pytest.approx(0.15, abs=1e-12)


# ---------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_one_class_images_give_undefined_image_metrics(labels: list[int]) -> None:
    got = compute_metrics(np.array([0.1, 0.5, 0.9]), np.array(labels), None, None)
    assert all(got[name] is None for name in METRIC_NAMES)
    assert got["mAD"] is None
    assert auroc(np.array([0.1, 0.5, 0.9]), np.array(labels)) is None


def test_no_positive_pixel_gives_undefined_pixel_metrics() -> None:
    maps = np.random.default_rng(0).random((2, 5, 5)).astype(np.float32)
    masks = np.zeros((2, 5, 5), dtype=bool)
    got = compute_metrics(np.array([0.2, 0.7]), np.array([0, 1]), maps, masks)
    assert all(got[name] is None for name in METRIC_NAMES[3:])
    assert got["I-AUROC"] == 1.0
    assert got["mAD"] == pytest.approx(1.0)
    assert aupro(maps, masks) is None


def test_no_negative_pixel_leaves_auroc_and_aupro_undefined() -> None:
    maps = np.random.default_rng(1).random((2, 3, 3))
    masks = np.ones((2, 3, 3))
    got = compute_metrics(np.zeros(2), np.zeros(2), maps, masks, metrics=METRIC_NAMES[3:])
    assert got["P-AUROC"] is None and got["AUPRO"] is None
    assert got["P-AP"] == 1.0 and got["P-F1max"] == 1.0


def test_constant_scores() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(101) < 0.3
    p = labels.mean()
    scores = np.full(101, 0.25)
    assert auroc(scores, labels) == 0.5
    assert average_precision(scores, labels) == pytest.approx(p, abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(2 * p / (1 + p), abs=1e-12)


def test_maps_none_computes_image_metrics_only() -> None:
    got = compute_metrics(np.array([0.1, 0.9]), np.array([0, 1]), None, None)
    assert got["I-AUROC"] == 1.0
    assert all(got[name] is None for name in METRIC_NAMES[3:])
    assert got["mAD"] == pytest.approx(1.0)


def test_masks_binarised_above_zero() -> None:
    maps, masks = _hand_case(0.7)
    assert aupro(maps, masks.astype(np.uint8) * 255) == pytest.approx(aupro(maps, masks))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused(bad: float) -> None:
    scores = np.array([0.1, bad, 0.3, bad])
    with pytest.raises(ValueError, match=r"image_scores contains 2 non-finite"):
        compute_metrics(scores, np.array([0, 1, 0, 1]), None, None)
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    maps[1, 2, 2] = bad
    with pytest.raises(ValueError, match=r"maps contains 1 non-finite"):
        compute_metrics(np.zeros(2), np.array([0, 1]), maps, maps > 0)
    with pytest.raises(ValueError, match=r"scores contains 2 non-finite"):
        auroc(scores, np.array([0, 1, 0, 1]))


def test_shape_mismatches_and_bad_arguments_are_refused() -> None:
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.zeros(3), np.zeros(2), None, None)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.zeros(2), np.zeros(2), maps, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="images"):
        compute_metrics(np.zeros(3), np.zeros(3), maps, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        aupro(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="masks are required"):
        compute_metrics(np.zeros(2), np.zeros(2), maps, None)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(np.zeros(2), np.zeros(2), None, None, metrics=("I-AUROC", "AUC"))
    with pytest.raises(ValueError, match="only 0 and 1"):
        auroc(np.zeros(3), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="pro_fpr_limit"):
        aupro(maps, np.ones_like(maps), fpr_limit=0.0)


# ----------------------------------------------------------------------------------- mean row


def test_mean_over_classes_skips_undefined_values() -> None:
    per_class = {
        "bottle": {"I-AUROC": 0.9, "P-AUROC": 0.8, "AUPRO": None, "mAD": 0.85},
        "cable": {"I-AUROC": 0.7, "P-AUROC": None, "AUPRO": None, "mAD": 0.7},
        "grid": {"I-AUROC": None, "P-AUROC": 0.6, "AUPRO": None, "mAD": 0.6},
    }
    got = mean_over_classes(per_class)
    assert got["I-AUROC"] == pytest.approx(0.8)
    assert got["P-AUROC"] == pytest.approx(0.7)
    assert got["AUPRO"] is None
    assert got["mAD"] == pytest.approx(0.75)  # recomputed from the row, not averaged per class
    assert list(got) == ["I-AUROC", "P-AUROC", "AUPRO", "mAD"]
    assert mean_over_classes({}) == {"mAD": None}


def test_speed_benchmark_runs_on_tiny_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "metrics_speed.py"
    spec = importlib.util.spec_from_file_location("metrics_speed", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "speed.json"
    assert module.main(["--n-images", "6", "--size", "32", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {*METRIC_NAMES, "all seven"}
    assert "all seven" in capsys.readouterr().out
