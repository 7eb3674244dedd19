"""`rlr predict --masks`: binary defect masks from the calibrated pixel threshold; the normalised score;
overlays that carry their score, decision and colour bar."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import rlr
from rlr.cli import main
from rlr.data.demo import generate_demo
from rlr.deploy.calibrate import calibrate
from rlr.deploy.model import Model
from rlr.deploy.overlay import annotated_overlay, render_overlay
from rlr.deploy.thresholds import THRESHOLDS_NAME, normalised_score, read_pixel_thresholds, read_thresholds
from rlr.engine.train import train
from rlr.results import PredictionResult

from .conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tiny_demo, feature_cache_dir, tmp_path_factory):
    """A trained run, not calibrated."""
    return train(tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1"), tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="module")
def calibrated(run_dir, tmp_path_factory):
    """A copy of the run, calibrated on normal images it never saw."""
    copy = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(run_dir, copy)
    normal = generate_demo(tmp_path_factory.mktemp("normal") / "data", seed=1, image_size=128, n_train=4, n_test_good=1)
    calibrate(Model.load(copy, "cpu", use_thresholds=False), normal)
    return copy


@pytest.fixture
def inputs(tiny_demo, tmp_path):
    """A defective and a normal test image, one stretched to 150 x 90, and two files whose short names clash."""
    defect = next(p for p in sorted((tiny_demo / "brick" / "test").rglob("*.png")) if p.parent.name != "good")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(defect).resize((150, 90)).save(folder / "wide.png")
    shutil.copy(defect, folder / "a.png")
    Image.open(next((tiny_demo / "brick" / "test" / "good").glob("*.png"))).save(folder / "a.jpg")
    return folder


def _rows(out):
    with open(out / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_masks_are_binary_at_the_input_size_from_the_pixel_threshold(calibrated, inputs, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(calibrated), str(inputs), "--out", str(out), "--masks", "--device", "cpu"]) == 0
    rows = _rows(out)
    assert sorted(row["mask"] for row in rows) == ["masks/a.jpg.png", "masks/a.png.png", "masks/wide.png"]
    pixel = read_pixel_thresholds(calibrated, rlr.load(calibrated, "cpu").checkpoint_digest)
    model = rlr.load(calibrated, "cpu")
    marked = 0
    for row in rows:
        mask = Image.open(out / row["mask"])
        assert mask.mode == "L" and mask.size == Image.open(row["path"]).size
        values = np.asarray(mask)
        assert set(np.unique(values)) <= {0, 255}
        result = model.predict(row["path"])
        expected = result.map_at_original_size() > pixel.global_threshold  # outside the dataset: the global one
        np.testing.assert_array_equal(values == 255, expected)
        marked += int(expected.sum())
        overlay = np.asarray(Image.open(out / row["overlay"])).reshape(-1, 3)
        assert all((overlay == end).all(axis=1).any() for end in ((0, 0, 128), (128, 0, 0)))  # its colour bar
    assert marked > 0  # the defective images have pixels above the normal images' 99.9th percentile


def test_a_class_gets_its_own_pixel_threshold(calibrated, inputs, tmp_path):
    out = tmp_path / "out"
    image = str(inputs / "a.png")
    assert main(["predict", str(calibrated), image, "--out", str(out), "--masks", "--class", "grass"]) == 0
    stored = json.loads((calibrated / THRESHOLDS_NAME).read_text())
    result = rlr.load(calibrated, "cpu").predict(image)
    expected = result.map_at_original_size() > stored["per_class"]["grass"]["pixel_threshold"]
    assert stored["per_class"]["grass"]["pixel_threshold"] != stored["global"]["pixel_threshold"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / _rows(out)[0]["mask"])) == 255, expected)


def test_masks_without_calibration_are_a_one_line_error_before_any_work(run_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(run_dir), str(inputs), "--out", str(out), "--masks"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rlr: error: {run_dir}: not calibrated: --masks needs a pixel threshold, run `rlr calibrate {run_dir}` first"
    )
    assert not out.exists()


def test_thresholds_from_an_earlier_calibrate_still_load_but_give_no_masks(calibrated, inputs, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(calibrated, old)
    payload = json.loads((old / THRESHOLDS_NAME).read_text())
    for entry in [payload["global"], *payload["per_class"].values()]:
        del entry["pixel_threshold"]
    payload["format"] = 1
    (old / THRESHOLDS_NAME).write_text(json.dumps(payload))
    model = rlr.load(old, "cpu")
    assert model.thresholds == read_thresholds(calibrated, model.checkpoint_digest)
    assert read_pixel_thresholds(old, model.checkpoint_digest) is None
    assert main(["predict", str(old), str(inputs), "--out", str(tmp_path / "o")]) == 0
    assert {row["decision"] for row in _rows(tmp_path / "o")} <= {"normal", "anomalous"}
    capsys.readouterr()
    assert main(["predict", str(old), str(inputs), "--out", str(tmp_path / "m"), "--masks"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rlr: error: {old / THRESHOLDS_NAME}: has no pixel threshold") and "\n" not in err


def test_normalised_score_is_half_at_the_threshold_and_increasing():
    assert normalised_score(2.0, 2.0) == 0.5
    assert normalised_score(0.0, 2.0) == 0.0 and normalised_score(-1.0, 2.0) == 0.0
    scores = np.linspace(0.0, 10.0, 101)
    values = [normalised_score(float(s), 2.0) for s in scores]
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] < 1.0
    assert all((v > 0.5) == (s > 2.0) for s, v in zip(scores, values))  # the same decision as the threshold
    assert normalised_score(1.0, None) is None
    assert normalised_score(1e-9, 0.0) == 1.0 and normalised_score(0.0, 0.0) == 0.0


def test_the_csv_has_the_normalised_score_beside_the_raw_one(calibrated, run_dir, inputs, tmp_path):
    assert main(["predict", str(calibrated), str(inputs), "--out", str(tmp_path / "c"), "--no-overlays"]) == 0
    for row in _rows(tmp_path / "c"):
        score, threshold, normalised = float(row["score"]), float(row["threshold"]), float(row["normalised_score"])
        assert normalised == pytest.approx(score / (score + threshold), abs=1e-4)
        assert (normalised > 0.5) == (row["decision"] == "anomalous")
        assert row["mask"] == ""
    assert main(["predict", str(run_dir), str(inputs), "--out", str(tmp_path / "u"), "--no-overlays"]) == 0
    assert {row["normalised_score"] for row in _rows(tmp_path / "u")} == {""}


def _result(threshold: float | None, score: float) -> PredictionResult:
    amap = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    return PredictionResult(score, amap, threshold, None, (320, 240))


def test_overlays_carry_a_legend_band_and_keep_the_image_size():
    image = Image.fromarray(np.full((240, 320, 3), 128, dtype=np.uint8))
    plain = np.asarray(render_overlay(_result(0.5, 0.9), image))
    marked = np.asarray(annotated_overlay(_result(0.5, 0.9), image))
    assert marked.shape == plain.shape
    changed = np.flatnonzero(np.abs(marked.astype(int) - plain).sum(axis=(1, 2)))
    top = changed.min()
    assert top > 240 * 3 // 4  # only a band along the bottom is drawn on
    band = marked[top:].reshape(-1, 3)
    for end in ((0, 0, 128), (128, 0, 0)):  # the colour bar runs over jet, dark blue to dark red
        assert (band == end).all(axis=1).any()
    normal = np.asarray(annotated_overlay(_result(0.5, 0.1), image))
    assert (normal[top:] != marked[top:]).any()  # another decision and score, other text
    tiny = annotated_overlay(_result(None, 0.9), Image.new("RGB", (40, 30)))
    assert tiny.size == (40, 30)
