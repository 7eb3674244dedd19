"""`rlr calibrate`: thresholds from held-out normal images only, stored in the run, used by predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import rlr
import rlr.data.transforms as transforms
from rlr.cli import main
from rlr.config import load_config
from rlr.data.demo import generate_demo
from rlr.deploy.calibrate import calibrate, held_out_normals, normal_folders
from rlr.deploy.model import Model
from rlr.deploy.thresholds import THRESHOLDS_NAME, quantile_threshold, resolve_quantile
from rlr.engine.build import build_split
from rlr.engine.train import train
from rlr.errors import ConfigError, DataError

from .conftest import tiny_config
from .test_own_data import own_data

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
    assert stored["training_images_left_out"] == 0 and stored["format"] == 2
    for entry in [stored["global"], *stored["per_class"].values()]:
        assert entry["min_score"] <= entry["threshold"] <= entry["max_score"]
    assert stored["quantile"] == 0.9 and stored["checkpoint_sha256"] == model.checkpoint_digest
    brick = model.predict(sorted((held_out / "brick/train/good").iterdir()))
    assert stored["per_class"]["brick"]["threshold"] == quantile_threshold(np.array([r.score for r in brick]), 0.9)
    assert stored["pixel_quantile"] == 0.999
    pixels = np.concatenate([r.map.ravel() for r in brick])
    assert stored["per_class"]["brick"]["pixel_threshold"] == quantile_threshold(pixels, 0.999)
    assert np.mean(pixels > stored["per_class"]["brick"]["pixel_threshold"]) <= 0.001


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


def test_a_folder_of_training_images_is_refused_in_one_line(run_dir, tiny_demo, capsys):
    assert main(["calibrate", str(run_dir), "--normal", str(tiny_demo), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rlr: error: {tiny_demo / 'brick' / 'train' / 'good'}: all 6 normal images were used for training: "
        "calibrate on normal images the model never saw (without --normal: the run's held-out normals, "
        "data.normal_test_ratio)"
    )


def test_training_images_among_the_normals_are_left_out(run_dir, tiny_demo, held_out, tmp_path, capsys):
    mixed = tmp_path / "mixed" / "brick"
    mixed.mkdir(parents=True)
    for image in sorted((tiny_demo / "brick" / "train" / "good").iterdir())[:3]:  # the same files, linked
        (mixed / f"trained_{image.name}").symlink_to(image)
    unseen = sorted((held_out / "brick" / "train" / "good").iterdir())
    for image in unseen:
        shutil.copy(image, mixed / image.name)
    model = Model.load(run_dir, "cpu", use_thresholds=False)
    payload = calibrate(model, mixed.parent)
    assert "rlr: calibrate: left out 3 of the normal images" in capsys.readouterr().err
    assert payload["training_images_left_out"] == 3
    assert payload["per_class"]["brick"]["n_images"] == len(unseen) == payload["global"]["n_images"]
    assert payload["global"]["threshold"] == quantile_threshold(
        np.array([r.score for r in model.predict(unseen)]), 0.99
    )


def test_stale_thresholds_are_refused(run_dir, held_out):
    payload = calibrate(Model.load(run_dir, "cpu", use_thresholds=False), held_out)
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


@pytest.fixture(scope="module")
def held_out_run(tiny_demo, feature_cache_dir, tmp_path_factory):
    """Own-data folders (good/ and defect folders only), trained with a third of the good images held out."""
    root = own_data(tiny_demo, tmp_path_factory.mktemp("own") / "data")
    extra = ("data.format=folder", f"data.root={root}", "data.normal_test_ratio=0.34", "train.epochs=1")
    return train(tiny_config(tiny_demo, feature_cache_dir, *extra), tmp_path_factory.mktemp("runs") / "held")


def test_without_a_folder_the_runs_held_out_normals_and_only_they_are_used(held_out_run, monkeypatch, capsys):
    split = build_split(load_config(held_out_run / "config.yaml"))
    trained = {r.image_path for r in split.train}
    held = {name: [r.image_path for r in records if r.label == 0] for name, records in split.test.items()}
    assert all(held.values()) and not trained & {p for paths in held.values() for p in paths}
    read = []
    original = transforms.read_image
    monkeypatch.setattr("rlr.deploy.model.read_image", lambda path, *a: read.append(Path(path)) or original(path, *a))
    assert main(["calibrate", str(held_out_run), "--device", "cpu"]) == 0
    assert sorted(read) == sorted(p for paths in held.values() for p in paths)
    stored = json.loads((held_out_run / THRESHOLDS_NAME).read_text())
    assert stored["normal_dir"] is None and "held-out normals" in stored["normal_images"]
    assert {name: entry["n_images"] for name, entry in stored["per_class"].items()} == {
        name: len(paths) for name, paths in held.items()
    }
    assert "pixel threshold" in capsys.readouterr().out


def test_held_out_normals_are_the_moved_images_not_a_class_s_own_test_normals(tiny_demo, feature_cache_dir, tmp_path):
    # MVTec layout: every class has test/good, so data.normal_test_ratio moves nothing
    assert held_out_normals(tiny_config(tiny_demo, feature_cache_dir, "data.normal_test_ratio=0.34")) == {}
    root = own_data(tiny_demo, tmp_path / "own")
    config = tiny_config(tiny_demo, feature_cache_dir, "data.format=folder", f"data.root={root}")
    assert held_out_normals(config) == {}
    config = tiny_config(
        tiny_demo, feature_cache_dir, "data.format=folder", f"data.root={root}", "data.normal_test_ratio=0.34"
    )
    held = held_out_normals(config)
    assert sorted(held) == ["brick", "grass", "gravel"]
    for name, paths in held.items():
        good = sorted((root / name / "good").iterdir())
        assert len(paths) == round(0.34 * len(good)) and set(paths) <= set(good)


def test_without_a_folder_a_run_holding_out_nothing_is_refused_in_one_line(run_dir, capsys):
    assert main(["calibrate", str(run_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rlr: error: {run_dir}: no --normal folder given, and the run holds out no normal images")
    assert "data.normal_test_ratio is 0" in err and "\n" not in err


def test_pixel_quantile_is_checked_and_stored(run_dir, held_out, capsys):
    model = Model.load(run_dir, "cpu", use_thresholds=False)
    with pytest.raises(ConfigError, match=r"pixel quantile must lie in \(0, 1\], got 1.5"):
        calibrate(model, held_out, pixel_quantile=1.5)
    assert main(["calibrate", str(run_dir), "--normal", str(held_out), "--pixel-quantile", "0.9"]) == 0
    assert "(pixels: 0.9)" in capsys.readouterr().out
    assert json.loads((run_dir / THRESHOLDS_NAME).read_text())["pixel_quantile"] == 0.9
