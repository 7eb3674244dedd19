"""`rlr export --format openvino`: the OpenVINO runner reproduces PyTorch and handles files like `rlr predict`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import rlr
from rlr.cli import main
from rlr.engine.train import train

from .conftest import tiny_config
from .parity import TOLERANCE, assert_parity, imported_modules

pytest.importorskip("openvino", reason="the openvino extra is not installed")

from rlr.deploy import onnx_runner, openvino_runner  # noqa: E402 (after the skip)

RUNNER_MODULES = {"__future__", "sys", "pathlib", "numpy", "openvino", "rlr", "rlr_onnx_runner"}


@pytest.fixture(scope="module")
def exported(tiny_demo, feature_cache_dir, tmp_path_factory):
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1")
    run_dir = train(config, tmp_path_factory.mktemp("runs") / "tiny")
    assert main(["export", str(run_dir), "--format", "openvino"]) == 0
    return run_dir, run_dir / "openvino"


def test_export_writes_ir_json_and_both_runner_files(exported):
    _, out = exported
    assert {p.name for p in out.iterdir()} == {
        "model.xml",
        "model.bin",
        "model.json",
        "rlr_openvino_runner.py",
        "rlr_onnx_runner.py",
    }
    info = json.loads((out / "model.json").read_text())
    assert info["engine"]["name"] == "openvino" and info["engine"]["weights"] == "float32"
    assert info["preprocessing"]["image_size"] == 128
    assert info["verification"]["max_map_difference_relative_to_range"] < TOLERANCE
    assert (out / "rlr_openvino_runner.py").read_text() == Path(openvino_runner.__file__).read_text()
    assert (out / "rlr_onnx_runner.py").read_text() == Path(onnx_runner.__file__).read_text()


def test_runner_imports_nothing_but_openvino_numpy_and_the_shared_reader():
    names = imported_modules(openvino_runner.__file__)
    assert names <= RUNNER_MODULES, names - RUNNER_MODULES


def test_openvino_matches_pytorch_on_the_demo_test_images(exported, tiny_demo):
    run_dir, out = exported
    paths = sorted(tiny_demo.glob("*/test/*/*.png"))
    assert_parity(rlr.load(run_dir, "cpu"), openvino_runner.OpenVinoScorer(out / "model.xml"), paths)


def test_copied_runner_takes_folders_and_globs_and_skips_bad_files_without_torch(exported, tiny_demo, tmp_path):
    run_dir, out = exported
    good = sorted(tiny_demo.glob("brick/test/good/*.png"))
    folder = tmp_path / "line"
    folder.mkdir()
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (folder / "notes.txt").write_text("not an image, and not an image name: ignored in a folder")
    pattern = str(tiny_demo / "gravel" / "test" / "good" / "*.png")
    blocker = (
        "import sys, runpy; sys.modules['torch'] = sys.modules['rlr'] = sys.modules['onnxruntime'] = None; "
        f"sys.path.insert(0, {str(out)!r}); sys.argv = ['runner', {str(out / 'model.xml')!r}, {str(folder)!r}, "
        f"{pattern!r}, 'missing.png']; runpy.run_path({str(out / 'rlr_openvino_runner.py')!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr
    header, *rows = done.stdout.splitlines()
    n_gravel = len(list((tiny_demo / "gravel" / "test" / "good").glob("*.png")))
    assert header == "path,score,threshold,decision" and len(rows) == len(good) + n_gravel
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped: ")]
    assert skipped[0] == "skipped: missing.png: file not found"  # named, not found: before any scoring
    assert skipped[1].startswith(f"skipped: {folder / 'broken.png'}: not a readable image (") and len(skipped) == 2
    first = next(row for row in rows if row.startswith(str(folder / good[0].name)))
    reference = rlr.load(run_dir, "cpu").predict(folder / good[0].name).score
    assert float(first.split(",")[1]) == pytest.approx(reference, rel=1e-4)
