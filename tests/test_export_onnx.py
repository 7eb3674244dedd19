"""`rlr export --format onnx`: the standalone onnxruntime runner reproduces PyTorch's maps and scores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import rlr
from rlr.cli import main
from rlr.data.transforms import load_image
from rlr.engine.train import train

from .conftest import realmini_class_config, tiny_config
from .hostile import no_hang
from .parity import TOLERANCE, assert_parity, imported_modules

onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")

from rlr.deploy import onnx_runner  # noqa: E402 (after the skip: it needs onnxruntime)

RUNNER_MODULES = {"__future__", "argparse", "json", "sys", "pathlib", "typing", "numpy", "onnxruntime", "PIL"}
RUNNER_MODULES |= {"fnmatch", "os"}  # its own walk and glob: the same link-loop rule as rlr's (os.path.realpath)


@pytest.fixture(scope="module")
def exported(tiny_demo, feature_cache_dir, tmp_path_factory):
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1")
    run_dir = train(config, tmp_path_factory.mktemp("runs") / "tiny")
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    return run_dir, run_dir / "onnx"


def test_export_writes_model_json_and_runner(exported):
    _, out = exported
    import onnx

    graph = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["map", "score"]
    info = json.loads((out / "model.json").read_text())
    assert info["preprocessing"]["image_size"] == 128 and info["input"]["range"] == [0.0, 1.0]
    assert info["thresholds"] is None and info["decision"] == "anomalous when score > threshold"
    assert info["verification"]["max_map_difference_relative_to_range"] < TOLERANCE
    assert (out / "rlr_onnx_runner.py").read_text() == Path(onnx_runner.__file__).read_text()


def test_runner_imports_nothing_but_onnxruntime_numpy_pillow():
    names = imported_modules(onnx_runner.__file__)
    assert names <= RUNNER_MODULES, names - RUNNER_MODULES


def test_onnx_runner_matches_pytorch_on_the_demo_test_images(exported, tiny_demo):
    run_dir, out = exported
    paths = sorted(tiny_demo.glob("*/test/*/*.png"))
    assert_parity(rlr.load(run_dir, "cpu"), onnx_runner.OnnxScorer(out / "model.onnx"), paths)


def test_global_reference_reach_exports_with_parity(tiny_demo, feature_cache_dir, tmp_path):
    """LCA over the whole reference (no window gather, no mask) goes through the ONNX export unchanged."""
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1", "model.reference_reach=global")
    run_dir = train(config, tmp_path / "global")
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    paths = sorted(tiny_demo.glob("*/test/*/*.png"))[:4]
    assert_parity(rlr.load(run_dir, "cpu"), onnx_runner.OnnxScorer(run_dir / "onnx" / "model.onnx"), paths)


def test_copied_runner_works_without_torch_or_rlr(exported, tiny_demo, tmp_path):
    run_dir, out = exported
    path = next(tiny_demo.glob("brick/test/good/*.png"))
    blocker = (
        "import sys, runpy; sys.modules['torch'] = sys.modules['rlr'] = None; "
        f"sys.argv = ['runner', {str(out / 'model.onnx')!r}, {str(path)!r}]; "
        f"runpy.run_path({str(out / 'rlr_onnx_runner.py')!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    header, line = done.stdout.splitlines()
    assert header == "path,score,threshold,decision"
    assert float(line.split(",")[1]) == pytest.approx(rlr.load(run_dir, "cpu").predict(path).score, rel=1e-4)


def test_runner_takes_folders_and_globs_and_skips_a_bad_file_in_one_line(exported, tiny_demo, tmp_path, capsys):
    _, out = exported
    folder = tmp_path / "line"
    folder.mkdir()
    for path in sorted(tiny_demo.glob("brick/test/good/*.png")):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (folder / ".hidden.png").write_bytes(b"hidden files are skipped")
    (folder / "notes.txt").write_text("not an image name: ignored in a folder")
    pattern = str(tiny_demo / "gravel" / "test" / "*" / "*.png")
    assert onnx_runner.main([str(out / "model.onnx"), str(folder), pattern, str(tmp_path / "gone.png")]) == 1
    captured = capsys.readouterr()
    expected = len(list(folder.glob("[!.]*.png"))) - 1 + len(list(tiny_demo.glob("gravel/test/*/*.png")))
    assert len(captured.out.splitlines()) == 1 + expected
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert skipped[0] == f"skipped: {tmp_path / 'gone.png'}: file not found" and len(skipped) == 2
    assert skipped[1].startswith(f"skipped: {folder / 'cut.png'}: not a readable image (")


def test_runner_through_link_loops_ends_and_scores_each_image_once(exported, tiny_demo, tmp_path, capsys):
    _, out = exported
    images, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    (images / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    good = sorted(tiny_demo.glob("brick/test/good/*.png"))
    for source, target in zip(good, (images / "a.png", images / "sub" / "b.png", elsewhere / "c.png")):
        shutil.copy(source, target)
    (images / "sub" / "up").symlink_to("..")
    (images / "self").symlink_to(".")
    (images / "linked").symlink_to(elsewhere)  # followed; elsewhere/c.png, named too, is the same file
    with no_hang(60):  # glob.glob followed `up` and `self` until 40 links deep: 2**40 paths
        code = onnx_runner.main([str(out / "model.onnx"), f"{images}/**/*.png", str(images), str(elsewhere)])
    assert code == 0
    scored = [line.split(",")[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert sorted(scored) == [str(images / name) for name in ("a.png", "linked/c.png", "sub/b.png")]


def test_runner_names_a_folder_it_cannot_list(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    listing = Path.iterdir

    def refusing(folder: Path):
        if folder.name == "locked":
            raise PermissionError(13, "Permission denied")
        return listing(folder)

    monkeypatch.setattr(Path, "iterdir", refusing)  # root may list any folder, so refuse one here
    files, problems = onnx_runner.collect_images([str(tmp_path)])
    assert files == [tmp_path / "a.png"]
    assert problems == [f"{tmp_path / 'locked'}: cannot list folder (permission denied)"]


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "small"])
def test_runner_preprocessing_matches_load_image(tmp_path, mode):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (150, 211, 3), dtype=np.uint8)
    if mode == "small":
        image = Image.fromarray(pixels[:40, :57])  # upsampled, not reduced
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (150, 211), dtype=np.uint16))
    else:
        image = Image.fromarray(pixels).convert(mode)
    path = tmp_path / "image.png"
    image.save(path)
    np.testing.assert_allclose(onnx_runner.load(path, 128), load_image(path, 128).numpy(), rtol=0, atol=2e-6)


def test_runner_applies_thresholds_from_the_json(exported, tmp_path):
    _, out = exported
    info = json.loads((out / "model.json").read_text())
    info["thresholds"] = {"global": 0.5, "per_class": {"brick": 0.25}}
    (tmp_path / "model.json").write_text(json.dumps(info))
    scorer = onnx_runner.OnnxScorer(out / "model.onnx", tmp_path / "model.json")
    assert scorer.threshold() == 0.5 and scorer.threshold("brick") == 0.25 and scorer.threshold("other") == 0.5
    maps, scores = scorer.run(np.zeros((1, 3, 128, 128), dtype=np.float32))
    assert maps.shape == (1, 128, 128) and scores.shape == (1,)


@pytest.mark.slow
@pytest.mark.realmini
def test_onnx_parity_on_realmini_test_images(realmini, feature_cache_dir, tmp_path):
    """One real class at the paper's 256 px with the default windows: every test image within 1e-4."""
    config = realmini_class_config(realmini, feature_cache_dir)
    run_dir = train(config, tmp_path / "run")
    assert main(["export", str(run_dir)]) == 0
    paths = sorted((realmini / "metal_plate" / "test").rglob("*.png"))
    assert len(paths) == 98
    map_error, score_error = assert_parity(
        rlr.load(run_dir, "cpu"), onnx_runner.OnnxScorer(run_dir / "onnx" / "model.onnx"), paths
    )
    print(
        f"realmini metal_plate: max map difference {map_error:.2e}, max score difference {score_error:.2e} of the range"
    )
