"""Report and `rlr figure` thumbnails are placed by the run's data.resize, as the model saw the image.

A heatmap is computed on the model's square; drawn over a stretched picture of a letterboxed or
center-cropped input it would sit in the wrong place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rlr.api
import rlr.report.figures
import rlr.report.qualitative
from rlr.config import save_config
from rlr.data.dataset import ImageDataset
from rlr.data.transforms import load_image
from rlr.data.types import ImageRecord
from rlr.errors import RlrError
from rlr.metrics import compute_metrics
from rlr.presets import cpu_config
from rlr.report.figures import display_image
from rlr.report.qualitative import write_qualitative
from rlr.report.run import write_results
from rlr.results import ClassResult

SIZE = 32
WIDE = (64, 32)  # width, height: letterboxed into the square, it leaves 8 black rows above and below
PROTOCOL = {"image_size": SIZE}


def _wide_image(path: Path, seed: int = 0) -> Path:
    """Noise brighter than black everywhere, so any zero pixel in the display is padding."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(60, 256, (WIDE[1], WIDE[0], 3), dtype=np.uint8)).save(path)
    return path


def _model_input(path: Path, resize: str) -> np.ndarray:
    """What the model is fed for `path` (the dataset behind test and the feature cache), as (S, S, 3)."""
    return ImageDataset([ImageRecord(path, "wide", 0, "good")], SIZE, resize)[0]["image"].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("resize", ["letterbox", "center_crop"])
def test_display_image_is_the_model_input(tmp_path, resize):
    path = _wide_image(tmp_path / "wide.png")
    shown = display_image(path, SIZE, resize)
    np.testing.assert_array_equal(shown, _model_input(path, resize))
    assert not np.array_equal(shown, display_image(path, SIZE))  # not the stretched picture


def test_letterbox_display_has_its_padding_where_the_model_input_has_it(tmp_path):
    shown = display_image(_wide_image(tmp_path / "wide.png"), SIZE, "letterbox")
    black_rows = np.flatnonzero((shown == 0).all(axis=(1, 2)))
    assert black_rows.tolist() == [*range(8), *range(24, 32)]
    assert (shown[8:24] > 0).all()  # the image itself fills the middle, every column


def test_stretch_default_is_unchanged(tmp_path):
    path = _wide_image(tmp_path / "wide.png")
    shown = display_image(path, SIZE)
    np.testing.assert_array_equal(shown, load_image(path, SIZE).permute(1, 2, 0).numpy())  # the former code
    np.testing.assert_array_equal(shown, _model_input(path, "stretch"))
    assert (shown > 0).all()  # the whole square is image, no padding


@pytest.fixture
def placements(monkeypatch) -> list[str]:
    """The data.resize of every thumbnail the report or figure code loads (loading still happens)."""
    seen: list[str] = []

    def recording(path, size, max_pixels=None, mode="stretch"):
        seen.append(mode)
        return load_image(path, size, max_pixels, mode)

    monkeypatch.setattr(rlr.report.figures, "load_image", recording)
    return seen


def _result(folder: Path) -> ClassResult:
    """Three normal and three defective wide images with maps at the model's square."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = [0, 0, 0, 1, 1, 1]
    records = [
        ImageRecord(_wide_image(folder / f"{i}.png", i), "wide", label, "cut" if label else "good")
        for i, label in enumerate(labels)
    ]
    masks = np.zeros((len(labels), SIZE, SIZE), dtype=bool)
    masks[3:, 12:20, 12:20] = True
    maps = (masks + 0.1 * np.arange(len(labels))[:, None, None]).astype(np.float32)
    scores = maps.max(axis=(1, 2))
    return ClassResult(records, scores, maps, masks, compute_metrics(scores, np.array(labels), maps, masks))


@pytest.mark.parametrize("resize", ["letterbox", "center_crop"])
def test_report_thumbnails_use_the_runs_resize(tmp_path, placements, resize):
    results = {name: _result(tmp_path / name) for name in ("a", "b", "c")}
    write_results(tmp_path / "run", results, PROTOCOL, SIZE, resize)
    # two classes are analysed for failures (3 false alarms + 3 misses each), the third shows 4 examples
    assert placements == [resize] * (2 * 6 + 4)
    assert (tmp_path / "run" / "report.html").is_file()


def test_report_thumbnails_default_to_stretch(tmp_path, placements):
    write_results(tmp_path / "run", {"wide": _result(tmp_path / "wide")}, PROTOCOL, SIZE)
    assert placements and set(placements) == {"stretch"}


def test_evaluate_hands_the_runs_resize_to_the_report(tmp_path, monkeypatch, placements):
    config = cpu_config(("data.resize=letterbox",))
    results = {"wide": _result(tmp_path / "wide")}
    monkeypatch.setattr(rlr.api, "test_results", lambda *args, **kwargs: (config, results))
    rlr.api.evaluate(tmp_path / "run", out_dir=tmp_path / "out")
    assert placements and set(placements) == {"letterbox"}


def _runs(tmp_path: Path, monkeypatch, *resizes: str) -> tuple[list[Path], list[Path]]:
    """Run folders that hold only their config; scoring is replaced by the same fixed results."""
    run_dirs, scored = [], []
    results = {"wide": _result(tmp_path / "wide")}
    for i, resize in enumerate(resizes):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        save_config(cpu_config((f"data.image_size={SIZE}", f"data.resize={resize}")), run_dir / "config.yaml")
        run_dirs.append(run_dir)
    paths = {"wide": [r.image_path.resolve() for r in results["wide"].records]}
    monkeypatch.setattr(rlr.report.qualitative, "check_same_images", lambda dirs: paths)

    def scoring(run_dir, device_name=None, classes=None):
        scored.append(run_dir)
        return rlr.report.qualitative.load_config(Path(run_dir) / "config.yaml"), results

    monkeypatch.setattr(rlr.report.qualitative, "test_results", scoring)
    return run_dirs, scored


def test_figure_thumbnails_use_the_runs_resize(tmp_path, monkeypatch, placements):
    run_dirs, _ = _runs(tmp_path, monkeypatch, "letterbox", "letterbox")
    picks = write_qualitative(run_dirs, tmp_path / "figure.png", samples=2)
    assert len(picks) == 2 and placements == ["letterbox"] * 2


def test_figure_refuses_runs_that_place_images_differently(tmp_path, monkeypatch, placements):
    run_dirs, scored = _runs(tmp_path, monkeypatch, "letterbox", "stretch")
    with pytest.raises(RlrError, match=r"data\.resize letterbox vs stretch") as error:
        write_qualitative(run_dirs, tmp_path / "figure.png")
    assert "\n" not in str(error.value) and str(run_dirs[1]) in str(error.value)
    assert scored == [] and not (tmp_path / "figure.png").exists()  # refused before any scoring
