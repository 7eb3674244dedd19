"""`rlr calibrate`: thresholds from held-out normal images only, stored in the run, used by predict."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rlr
import rlr.data.transforms as transforms
from rlr.cli import main
from rlr.data.demo import generate_demo
from rlr.deploy.calibrate import calibrate, normal_folders
from rlr.deploy.model import Model
from rlr.deploy.thresholds import THRESHOLDS_NAME, quantile_threshold, resolve_quantile
from rlr.engine.train import train
from rlr.errors import ConfigError, DataError

from .conftest import tiny_config

CLASSES = ["brick", "grass", "gravel", "tissue"]


@pytest.fixture(scope="module")
def run_dir(tiny_demo, feature_cache_dir, tmp_path_factory):
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1")
    return train(config, tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Normal images the model never saw: another draw of the demo generator (MVTec layout)."""
    root = tmp_path_factory.mktemp("held_out") / "data"
    return generate_demo(root, seed=1, image_size=128, n_train=5, n_test_good=1, n_test_defect=1)


@pytest.mark.parametrize("q,expected", [(0.5, 3.0), (0.9, 5.0), (0.99, 5.0), (0.2, 2.0)])
def test_quantile_is_an_observed_score_by_the_higher_rule(q, expected):
    scores = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    assert quantile_threshold(scores, q) == expected
    assert np.mean(scores > expected) <= 1 - q


def test_quantile_or_false_positive_rate_but_not_both():
    assert resolve_quantile(None, None) == 0.99
    assert resolve_quantile(None, 0.05) == pytest.approx(0.95)
    with pytest.raises(ConfigError, match="not both"):
        resolve_quantile(0.9, 0.1)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        resolve_quantile(1.5, None)


def test_normal_folder_layouts(tmp_path):
    (tmp_path / "mvtec" / "brick" / "train" / "good").mkdir(parents=True)
    (tmp_path / "mvtec" / "grass").mkdir(parents=True)
    assert normal_folders(tmp_path / "mvtec", CLASSES) == {
        "brick": tmp_path / "mvtec" / "brick" / "train" / "good",
        "grass": tmp_path / "mvtec" / "grass",
    }
    (tmp_path / "flat").mkdir()
    assert normal_folders(tmp_path / "flat", CLASSES) == {None: tmp_path / "flat"}
    with pytest.raises(DataError, match="normal image folder not found"):
        normal_folders(tmp_path / "absent", CLASSES)


def test_calibration_reads_only_normal_images_and_writes_the_run(run_dir, held_out, monkeypatch):
    read = []
    original = transforms.read_image
    monkeypatch.setattr("rlr.deploy.model.read_image", lambda path, *a: read.append(str(path)) or original(path, *a))
    model = Model.load(run_dir, "cpu", use_thresholds=False)
    payload = calibrate(model, held_out, quantile=0.9)
    assert read and all("/train/good/" in path and str(held_out) in path for path in read)
    stored = json.loads((run_dir / THRESHOLDS_NAME).read_text())
    assert stored == payload
    assert sorted(stored["per_class"]) == CLASSES
    assert stored["global"]["n_images"] == 4 * 5 == len(read)
    assert stored["images_also_in_training"] == 0
    for entry in [stored["global"], *stored["per_class"].values()]:
        assert entry["min_score"] <= entry["threshold"] <= entry["max_score"]
    assert stored["quantile"] == 0.9 and stored["checkpoint_sha256"] == model.checkpoint_digest
    assert stored["per_class"]["brick"]["threshold"] == quantile_threshold(
        np.array([r.score for r in model.predict(sorted((held_out / "brick/train/good").iterdir()))]), 0.9
    )


def test_predict_uses_the_class_threshold_inside_the_dataset_and_the_global_one_outside(
    run_dir, held_out, tiny_demo, tmp_path
):
    calibrate(Model.load(run_dir, "cpu", use_thresholds=False), held_out)
    model = rlr.load(run_dir, "cpu")
    per_class = model.thresholds.per_class
    inside = next((tiny_demo / "gravel" / "test").rglob("*.png"))
    outside = tmp_path / "copy.png"
    outside.write_bytes(inside.read_bytes())
    assert model.predict(inside).threshold == per_class["gravel"]
    assert model.predict(outside).threshold == model.thresholds.global_threshold
    result = model.predict(outside, class_name="brick")
    assert result.threshold == per_class["brick"] and result.class_name == "brick"
    assert result.anomalous == (result.score > per_class["brick"])
    assert result.decision in ("anomalous", "normal")


def test_training_images_are_flagged_and_stale_thresholds_refused(run_dir, tiny_demo, capsys):
    payload = calibrate(Model.load(run_dir, "cpu", use_thresholds=False), tiny_demo)
    assert payload["images_also_in_training"] == payload["global"]["n_images"] > 0
    assert "used for training" in capsys.readouterr().err
    path = run_dir / THRESHOLDS_NAME
    path.write_text(path.read_text().replace(payload["checkpoint_sha256"], "0" * 64))
    with pytest.raises(ConfigError, match="another checkpoint"):
        rlr.load(run_dir, "cpu")


def test_cli_calibrate_then_predict_decides(run_dir, held_out, tiny_demo, tmp_path, capsys):
    assert main(["calibrate", str(run_dir), "--normal", str(held_out), "--fpr", "0.05", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "global: threshold" in out and "brick: threshold" in out and "quantile 0.95" in out
    assert (
        main(["predict", str(run_dir), str(tiny_demo / "brick" / "test"), "--out", str(tmp_path), "--no-overlays"]) == 0
    )
    rows = (tmp_path / "predictions.csv").read_text().splitlines()[1:]
    assert rows and all(row.split(",")[4] in ("anomalous", "normal") for row in rows)


def test_cli_calibrate_errors_are_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", str(run_dir), "--normal", str(tmp_path / "empty")]) == 2
    assert "no image files found" in capsys.readouterr().err
    assert main(["calibrate", str(run_dir), "--normal", str(tmp_path / "empty"), "--quantile", "1.5"]) == 2
    assert "quantile must lie in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the two options are mutually exclusive
        main(["calibrate", str(run_dir), "--normal", str(tmp_path), "--quantile", "0.9", "--fpr", "0.1"])
