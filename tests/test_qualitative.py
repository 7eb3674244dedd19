"""`rlr figure`: rows of (image, ground truth, each run's map), the disputed-image pick, its colour rule."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rlr.cli import main
from rlr.config import load_config, save_config
from rlr.engine.evaluate import test_results as score_test_sets  # aliased: pytest would collect test_*
from rlr.engine.train import train
from rlr.errors import RlrError
from rlr.report.qualitative import (
    FigureRow,
    figure_size,
    normal_scale,
    pick_disputed,
    qualitative_figure,
    score_ranks,
    write_qualitative,
)

from .conftest import tiny_config

PANEL, COLORBAR, ROW_TITLES, CAPTION = 170, 80, 30, 50


@pytest.fixture(scope="module")
def two_runs(tiny_demo, feature_cache_dir, tmp_path_factory):
    """Two tiny runs on the same data that differ in seed and length, so their maps differ."""
    root = tmp_path_factory.mktemp("runs")
    first = train(tiny_config(tiny_demo, feature_cache_dir), root / "first")
    second = train(tiny_config(tiny_demo, feature_cache_dir, "train.seed=1", "train.epochs=1"), root / "second")
    return first, second


def test_score_ranks_are_scaled_and_average_ties():
    np.testing.assert_allclose(score_ranks(np.array([5.0, 1.0, 3.0, 3.0])), [1.0, 0.0, 0.5, 0.5])
    assert score_ranks(np.array([2.0])).tolist() == [0.0]


def test_pick_takes_defects_by_disagreement_spread_over_classes():
    labels = {"a": np.array([0, 1, 1, 1, 0]), "b": np.array([1, 0, 1])}
    scores = {
        # run 1 vs run 2 ranks of a's defects 1, 2, 3: (0.25, 1), (1, 0.75), (0.5, 0.5); normal 4 is never picked
        "a": [np.array([0.0, 1.0, 4.0, 2.0, 3.0]), np.array([0.0, 4.0, 3.0, 1.0, -9.0])],
        # b's defect 0 flips from highest to lowest, defect 2 agrees
        "b": [np.array([9.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0])],
    }
    picks = pick_disputed(labels, scores, 10)
    # first every class's most disputed defect (larger disagreement first), then every class's second, ...
    assert [(name, index) for name, index, _ in picks] == [("b", 0), ("a", 1), ("b", 2), ("a", 2), ("a", 3)]
    np.testing.assert_allclose([spread for *_, spread in picks], [1.0, 0.75, 0.5, 0.25, 0.0])
    assert all(labels[name][index] == 1 for name, index, _ in picks)
    assert pick_disputed(labels, scores, 2) == picks[:2]
    # equal disagreement: the image both runs rank lower (the harder defect) first
    assert pick_disputed({"c": np.array([1, 1, 0])}, {"c": [np.array([2.0, 0.0, 1.0])] * 2}, 2)[0][1] == 1
    assert pick_disputed({"n": np.array([0, 0])}, {"n": [np.array([1.0, 2.0])] * 2}, 3) == []


def test_maps_are_rescaled_by_their_normal_images():
    maps = np.zeros((3, 10, 10), dtype=np.float32)
    maps[0] = np.arange(100).reshape(10, 10)  # normal: median 49.5, 99th percentile 98.01
    maps[1] = 1000.0  # defective: ignored
    maps[2] = np.arange(100).reshape(10, 10)  # normal again
    offset, scale = normal_scale(maps, np.array([0, 1, 0]))
    assert offset == pytest.approx(49.5) and offset + scale == pytest.approx(np.percentile(np.arange(100), 99))
    assert normal_scale(np.ones((1, 4, 4)), np.array([1]))[1] > 0  # no normal image, constant map: still finite


def _png_size(data: bytes, tmp_path) -> tuple[int, int]:
    path = tmp_path / "figure.png"
    path.write_bytes(data)
    return Image.open(path).size


def test_figure_is_a_grid_of_rows_by_image_mask_and_runs(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:16] = True
    row = FigureRow(rng.random((32, 32, 3)), mask, [rng.random((32, 32)) * 3] * 3, "brick / hole", "000.png", ["s"] * 3)
    png = qualitative_figure([row, row], ["a (rlr)", "b (uniad)", "c (rlr)"])
    assert _png_size(png, tmp_path) == figure_size(2, 3) == (5 * PANEL + COLORBAR, 2 * (PANEL + ROW_TITLES) + CAPTION)


def _disagreement(per_run):
    ranks = np.stack([score_ranks(scores) for scores in per_run])
    return ranks.max(axis=0) - ranks.min(axis=0)


def test_automatic_figure_shows_the_most_disputed_defects(two_runs, tmp_path):
    first, second = two_runs
    out = tmp_path / "fig.png"
    picks = write_qualitative([first, second], out, samples=3, device_name="cpu")
    assert out.is_file() and Image.open(out).size == (4 * PANEL + COLORBAR, 3 * (PANEL + ROW_TITLES) + CAPTION)
    results = [score_test_sets(run, "cpu")[1] for run in (first, second)]
    spreads = {name: _disagreement([r[name].scores for r in results]) for name in results[0]}
    labels = {name: np.array([rec.label for rec in result.records]) for name, result in results[0].items()}
    assert len({p.class_name for p in picks}) == 3  # one row per class before any class gets a second
    for pick in picks:
        assert labels[pick.class_name][pick.index] == 1
        assert pick.image_path == results[0][pick.class_name].records[pick.index].image_path
        class_spread = spreads[pick.class_name]
        assert pick.disagreement == pytest.approx(class_spread[pick.index])
        assert pick.disagreement == pytest.approx(class_spread[labels[pick.class_name] == 1].max())
    # the classes shown are those whose most disputed defect is most disputed
    best = sorted((-s[labels[n] == 1].max(), n) for n, s in spreads.items())
    assert [-value for value, _ in best[:3]] == pytest.approx([p.disagreement for p in picks])


def test_cli_draws_chosen_images_in_order(two_runs, tmp_path, tiny_demo, capsys):
    first, second = two_runs
    defective = max((tiny_demo / "brick" / "test").glob("*/001.png"))
    chosen = [tiny_demo / "grass" / "test" / "good" / "000.png", defective]
    out = tmp_path / "chosen.png"
    code = main(["figure", "--runs", str(first), str(second), "--images", *map(str, chosen), "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert printed[:2] == [f"grass: {chosen[0]}", f"brick: {chosen[1]}"]
    assert Image.open(out).size == (4 * PANEL + COLORBAR, 2 * (PANEL + ROW_TITLES) + CAPTION)


def test_runs_on_other_images_are_refused_in_one_line(two_runs, tmp_path, capsys):
    first, _ = two_runs
    other = tmp_path / "other"
    other.mkdir()
    save_config(load_config(first / "config.yaml", ["data.classes=[brick, grass]"]), other / "config.yaml")
    code = main(["figure", "--runs", str(first), str(other), "--out", str(tmp_path / "x.png")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert str(first) in error and str(other) in error and "only in the first: gravel, tissue" in error
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(RlrError, match="not a test image of these runs"):
        write_qualitative([first], tmp_path / "y.png", images=[tmp_path / "nowhere.png"])
    with pytest.raises(RlrError, match="no class wood"):
        write_qualitative([first], tmp_path / "y.png", classes=["wood"])
