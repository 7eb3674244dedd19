"""`rlr.load(run).predict(...)` and `rlr predict`: the scores `rlr test` gives, any input kind, files out."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rlr
from rlr.api import evaluate
from rlr.cli import main
from rlr.data.transforms import load_image
from rlr.deploy.inputs import collect_inputs
from rlr.deploy.predict import output_names
from rlr.engine.train import train
from rlr.results import PredictionResult

from .conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tiny_demo, feature_cache_dir, tmp_path_factory):
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1")
    return train(config, tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="module")
def model(run_dir):
    return rlr.load(run_dir, "cpu")


def test_predict_gives_the_scores_and_maps_of_rlr_test(run_dir, model):
    """Same pipeline as `rlr test`; the only gap is its float16 feature cache (measured: <= 3e-4 of the range)."""
    for class_name, result in evaluate(run_dir, "cpu").items():
        predictions = model.predict([r.image_path for r in result.records])
        scores = np.array([p.score for p in predictions])
        maps = np.stack([p.map for p in predictions])
        span = result.maps.max() - result.maps.min()
        assert np.abs(scores - result.scores).max() < 1e-3 * span, class_name
        assert np.abs(maps - result.maps).max() < 1e-3 * span, class_name
        assert {p.class_name for p in predictions} == {class_name}


def test_every_input_kind_gives_the_same_result(model, tiny_demo):
    path = next((tiny_demo / "brick" / "test").rglob("*.png"))
    from_path = model.predict(path)
    assert isinstance(from_path, PredictionResult)
    with Image.open(path) as image:
        from_pil = model.predict(image.copy())
        from_array = model.predict(np.asarray(image.convert("RGB")))
    from_tensor = model.predict(load_image(path, model.image_size))
    for other in (from_pil, from_array, from_tensor):
        assert other.score == pytest.approx(from_path.score, rel=1e-6)
        np.testing.assert_allclose(other.map, from_path.map, rtol=1e-6)
    assert from_path.path == str(path) and from_pil.path is None
    assert from_path.map.shape == (model.image_size, model.image_size) and from_path.map.dtype == np.float32


def test_batches_are_deterministic_and_match_single_images(model, tiny_demo):
    paths = sorted((tiny_demo / "grass" / "test").rglob("*.png"))[:5]
    batched = model.predict(paths, batch_size=4)
    again = model.predict(paths, batch_size=4)
    singles = [model.predict(p) for p in paths]
    stacked = model.predict(torch.stack([load_image(p, model.image_size) for p in paths]))
    assert isinstance(batched, list) and len(batched) == len(paths) == len(stacked)
    assert [r.score for r in batched] == [r.score for r in again]
    for b, s, t in zip(batched, singles, stacked):
        assert b.score == pytest.approx(s.score, rel=1e-5) and b.score == pytest.approx(t.score, rel=1e-5)
    assert not any(p.requires_grad for p in model.scorer.parameters())


def test_uncalibrated_results_have_no_decision_and_maps_stretch_to_the_image(model, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 255, (60, 200, 3), dtype=np.uint8)).save(path)
    result = model.predict(path)
    assert result.threshold is None and result.anomalous is None and result.decision == ""
    assert result.original_size == (200, 60)
    full = result.map_at_original_size()
    assert full.shape == (60, 200)
    assert full.min() >= result.map.min() - 1e-6 and full.max() <= result.map.max() + 1e-6


def test_unsupported_inputs_are_refused(model):
    with pytest.raises(TypeError, match="cannot predict on a dict"):
        model.predict({"image": 1})
    with pytest.raises(TypeError, match="uint8"):
        model.predict(np.zeros((8, 8, 3), dtype=np.float64))


def test_collect_inputs_expands_folders_and_globs_and_reports_misses(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/1.png", "a/deep/2.jpg", "a/notes.txt", "a/.hidden.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    files, problems = collect_inputs(
        [
            tmp_path / "a",
            str(tmp_path / "*.png"),
            tmp_path / "a" / "1.png",
            tmp_path / "missing.png",
            str(tmp_path / "*.bmp"),
        ]
    )
    assert files == [tmp_path / "a/1.png", tmp_path / "a/deep/2.jpg", tmp_path / "b.png"]
    assert (
        len(problems) == 2 and "missing.png: file not found" in problems[0] and "no image file matches" in problems[1]
    )


def test_cli_predict_writes_csv_overlays_maps_and_reports_bad_files(run_dir, model, tiny_demo, tmp_path, capsys):
    good = tiny_demo / "tissue" / "test" / "good"
    bad = tmp_path / "inputs" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(run_dir),
            str(good),
            str(bad.parent),
            str(tmp_path / "nothing_here.png"),
            "--out",
            str(out),
            "--save-maps",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    skipped = [line for line in captured.err.splitlines() if line.startswith("rlr: skipped:")]
    assert len(skipped) == 2
    assert any("broken.png: truncated or corrupt" in line for line in skipped)
    assert any("nothing_here.png: file not found" in line for line in skipped)
    assert "Traceback" not in captured.err
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    expected = sorted(good.glob("*.png"))
    assert [r["path"] for r in rows] == [str(p) for p in expected]
    assert {r["class"] for r in rows} == {"tissue"} and {r["decision"] for r in rows} == {""}
    for row in rows:
        overlay = Image.open(out / row["overlay"])
        assert overlay.size == Image.open(row["path"]).size and overlay.mode == "RGB"
        result = model.predict(row["path"])
        np.testing.assert_allclose(np.load(out / row["map"]), result.map, rtol=1e-5)
        assert float(row["score"]) == pytest.approx(result.score, rel=1e-5)
    assert "scored 3 images" in captured.out


def test_cli_predict_full_size_maps_and_no_overlays(run_dir, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((40, 90, 3), 128, dtype=np.uint8)).save(path)
    assert (
        main(
            [
                "predict",
                str(run_dir),
                str(path),
                "--out",
                str(tmp_path / "o"),
                "--save-maps",
                "--full-size-maps",
                "--no-overlays",
            ]
        )
        == 0
    )
    (row,) = list(csv.DictReader((tmp_path / "o" / "predictions.csv").open()))
    assert row["overlay"] == "" and row["class"] == ""
    assert np.load(tmp_path / "o" / row["map"]).shape == (40, 90)


def test_cli_predict_refuses_an_unknown_class(run_dir, tiny_demo, capsys):
    assert main(["predict", str(run_dir), str(tiny_demo), "--class", "nope"]) == 2
    assert "unknown class 'nope'" in capsys.readouterr().err


def test_output_names_mirror_the_input_folders_and_stay_unique(tmp_path):
    files = [
        tmp_path / "a" / "good" / "001.png",
        tmp_path / "a" / "good" / "001.jpg",
        tmp_path / "a" / "bad" / "002.png",
    ]
    assert list(output_names(files).values()) == [Path("good/001.png"), Path("good/001.jpg"), Path("bad/002")]
