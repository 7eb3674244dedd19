"""data.resize: where each rule puts an image's pixels, masks aligned with them, the same rule in
training, testing, predict and the exported runner, the once-per-run stretch warning, bad values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rlr
from rlr.cli import main
from rlr.config import load_config
from rlr.data import ImageDataset, ImageRecord
from rlr.data.transforms import RESIZE_MODES, load_image, map_onto_image, resize_image, warn_if_stretched
from rlr.deploy import onnx_runner
from rlr.engine.evaluate import load_masks
from rlr.errors import ConfigError
from rlr.results import PredictionResult
from tests.conftest import tiny_config

SIZE = 64
GREY = 128 / 255  # the background of the marked images
WARNING = "data.resize=stretch changes its aspect ratio"


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _marked(tmp_path: Path) -> Path:
    """200 x 100, grey; a red 20 x 20 block in the top-left corner, a green one at x 50-70 (the
    left edge of the central square) along the top."""
    pixels = np.full((100, 200, 3), 128, dtype=np.uint8)
    pixels[:20, :20] = (255, 0, 0)
    pixels[:20, 50:70] = (0, 255, 0)
    return _save(tmp_path / "marked.png", pixels)


def test_stretch_squeezes_the_whole_image_into_the_square(tmp_path):
    out = load_image(_marked(tmp_path), SIZE, mode="stretch")
    assert out.shape == (3, SIZE, SIZE)
    assert out[:, 2, 2].tolist() == [1.0, 0.0, 0.0]  # the corner stays the corner
    assert out[:, 2, 18].tolist() == [0.0, 1.0, 0.0]  # x 50-70 of 200 -> 16-22.4 of 64
    assert torch.allclose(out[:, 40, 40], torch.full((3,), GREY))


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_black(tmp_path):
    out = load_image(_marked(tmp_path), SIZE, mode="letterbox")
    assert out.shape == (3, SIZE, SIZE)
    # 200 x 100 -> 64 x 32, centred: rows 16-47 hold the image, the rest is black
    assert out[:, :16].abs().max() == 0 and out[:, 48:].abs().max() == 0
    assert out[:, 17, 2].tolist() == [1.0, 0.0, 0.0]  # the corner, moved down by the padding
    assert out[:, 17, 19].tolist() == [0.0, 1.0, 0.0]  # x 50-70 of 200 -> 16-22.4
    assert torch.allclose(out[:, 40, 40], torch.full((3,), GREY))


def test_center_crop_keeps_the_central_square(tmp_path):
    out = load_image(_marked(tmp_path), SIZE, mode="center_crop")
    assert out.shape == (3, SIZE, SIZE)
    assert out[0].max() == pytest.approx(GREY)  # the red corner lies outside x 50-150: cut away
    assert out[:, 2, 2].tolist() == [0.0, 1.0, 0.0]  # the crop's own corner is the green block
    assert torch.allclose(out[:, 40, 40], torch.full((3,), GREY))


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_masks_stay_aligned_with_their_images(tmp_path, mode):
    image = np.zeros((100, 200), dtype=np.uint8)
    image[30:70, 120:160] = 255
    record = ImageRecord(
        _save(tmp_path / "image.png", image), "part", 1, "dent", _save(tmp_path / "mask.png", image.copy())
    )
    sample = ImageDataset([record], SIZE, mode)[0]
    pixels, mask = sample["image"][0], sample["mask"][0]
    assert mask.shape == (SIZE, SIZE) and mask.sum() > 0
    assert (mask[pixels > 0.75] == 1).all() and (mask[pixels < 0.25] == 0).all()
    assert np.array_equal(load_masks([record], SIZE, mode)[0], mask.numpy() > 0)  # what `rlr test` scores against


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("shape", [(100, 200), (30, 50), (90, 40)], ids=["wide", "small", "tall"])
def test_the_onnx_runner_resizes_as_rlr_does(tmp_path, mode, shape):
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "image.png", rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    expected = load_image(path, SIZE, mode=mode).numpy()
    np.testing.assert_allclose(onnx_runner.load(path, SIZE, mode), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_a_map_goes_back_where_its_pixels_came_from(tmp_path, mode):
    with Image.open(_marked(tmp_path)) as image:
        original = torch.from_numpy(np.asarray(image)[..., 0] / 255.0).float()  # red: a "map" of the corner block
    amap = resize_image(original[None], SIZE, mode)[0]
    back = map_onto_image(amap, (200, 100), (200, 100), mode)
    assert back.shape == (100, 200)
    if mode == "center_crop":
        assert back[:, :50].abs().max() == 0 and back[:, 150:].abs().max() == 0  # never scored
        assert back[40, 100] == pytest.approx(GREY, abs=1e-3)
    else:
        assert back[5, 5] == pytest.approx(1.0, abs=1e-3) and back[60, 100] == pytest.approx(GREY, abs=1e-3)
    result = PredictionResult(1.0, amap.numpy(), None, None, (200, 100), resize=mode)
    np.testing.assert_allclose(result.map_at_original_size(), back.numpy(), atol=1e-6)


def test_stretching_is_warned_about_once_naming_the_first_distorted_image(tmp_path, capsys):
    sizes = {"square": (100, 100), "ten_percent": (110, 100), "wide": (200, 100), "wider": (300, 100)}
    paths = {name: _save(tmp_path / f"{name}.png", np.zeros((h, w), np.uint8)) for name, (w, h) in sizes.items()}
    warn_if_stretched(paths.values(), "letterbox")
    warn_if_stretched([paths["square"], paths["ten_percent"]], "stretch")
    assert capsys.readouterr().err == ""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # left to the reader that needs its pixels
    warn_if_stretched([broken, *paths.values()], "stretch")
    assert capsys.readouterr().err == (
        f"rlr: warning: {paths['wide']} is 200x100: {WARNING} by 100% "
        "(said once; data.resize letterbox or center_crop keep it)\n"
    )


def test_a_bad_resize_value_is_one_line_naming_the_key(tiny_demo, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^unknown data.resize 'squash' \(known: stretch, letterbox, center_crop\)$"):
        load_config(None, ["data.resize=squash"])
    run_dir = tmp_path / "run"
    argv = ["train", "--data.root", str(tiny_demo), "--data.resize", "squash", "--run-dir", str(run_dir)]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err == "rlr: error: unknown data.resize 'squash' (known: stretch, letterbox, center_crop)\n"
    )
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def wide_demo(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo set cut to 128 x 80 (rows 24-103 of every image and mask), so stretching distorts it."""
    root = tmp_path_factory.mktemp("wide") / "data"
    for path in tiny_demo.rglob("*.png"):
        target = root / path.relative_to(tiny_demo)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.crop((0, 24, 128, 104)).save(target)
    return root


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if WARNING in line]


def test_training_and_predict_warn_once_each_about_stretched_images(wide_demo, feature_cache_dir, tmp_path, capsys):
    config = tiny_config(wide_demo, feature_cache_dir, "train.epochs=1")
    run = rlr.train(config, run_dir=tmp_path / "run")
    assert len(_warnings(capsys.readouterr().err)) == 1  # 24 training and 44 test images, all 128 x 80
    model = rlr.load(run, "cpu")
    model.predict([np.zeros((80, 128, 3), np.uint8)] * 3)
    model.predict(np.zeros((80, 128, 3), np.uint8))
    (line,) = _warnings(capsys.readouterr().err)
    assert line.startswith("rlr: warning: <ndarray> is 128x80:")


def test_letterbox_is_applied_alike_in_training_testing_predict_and_export(wide_demo, feature_cache_dir, tmp_path):
    config = tiny_config(wide_demo, feature_cache_dir, "train.epochs=1", "data.resize=letterbox")
    run = rlr.train(config, run_dir=tmp_path / "run")
    evaluation = rlr.test(run)
    assert json.loads((run.path / "metrics.json").read_text())["protocol"]["resize"] == "letterbox"
    tested = evaluation.results["brick"]
    # 128 x 80 at 128 px: rows 24-103 hold the image; the ground truth is there too, nowhere else
    assert tested.masks.any() and not tested.masks[:, :24].any() and not tested.masks[:, 104:].any()

    model = rlr.load(run, "cpu")
    paths = [record.image_path for record in tested.records]
    predicted = np.array([result.score for result in model.predict(paths)])
    span = tested.maps.max() - tested.maps.min()
    assert np.abs(predicted - tested.scores).max() / span < 5e-3  # float16 feature cache vs float32 (README)

    pytest.importorskip("onnxruntime")
    assert main(["export", str(run.path)]) == 0
    info = json.loads((run.path / "onnx" / "model.json").read_text())
    assert info["preprocessing"]["resize_mode"] == "letterbox"
    from tests.parity import assert_parity

    assert_parity(model, onnx_runner.OnnxScorer(run.path / "onnx" / "model.onnx"), paths)
