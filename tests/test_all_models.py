"""Every registered model through the whole library, and a model that exists only in this file.

Each goes fit -> test -> resume -> calibrate -> predict -> ONNX export -> onnxruntime parity on
the tiny demo set, through the CLI. The third model, a per-token bottleneck, is registered here
with one `register_model` call: that it passes too, with no line of the library naming it, is the
proof that adding a model needs its own package and one registry line, nothing else.
"""

from __future__ import annotations

import ast
import csv
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest
import torch
from torch import nn

import rlr
import rlr.models as registry
from rlr.cli import main
from rlr.data.demo import generate_demo
from rlr.deploy import onnx_runner
from rlr.models import list_models, model_spec, register_model
from rlr.models.base import ModelConfig, ModelSpec, Reconstructor

from .parity import assert_parity

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")

SOURCE = Path(rlr.__file__).resolve().parent


@dataclass
class BottleneckConfig(ModelConfig):
    name: str = "bottleneck"
    width: int = 8


class Bottleneck(Reconstructor):
    """Each token squeezed through `width` channels and back: the smallest honest reconstructor."""

    def __init__(self, channels: Sequence[int], width: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1), nn.GELU(), nn.Conv2d(width, c, 1)) for c in channels
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [level(f) for level, f in zip(self.levels, features)]

    def level_auxiliary_losses(self) -> list[torch.Tensor]:
        return [level[0].weight.new_zeros(()) for level in self.levels]


BOTTLENECK = ModelSpec(
    name="bottleneck",
    title="Bottleneck",
    config=BottleneckConfig,
    build=lambda section, channels, map_sizes: Bottleneck(channels, section.width),
    loss="mse",
    map_score="l2",
    image_score="gaussian_max",
)

MODELS = (*list_models(), BOTTLENECK.name)


@pytest.fixture
def with_bottleneck(monkeypatch):
    """The dummy model registered for one test; the registry is restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model(BOTTLENECK)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    """Normal images no model trained on, for calibration."""
    root = tmp_path_factory.mktemp("held_out") / "data"
    return generate_demo(root, seed=1, image_size=128, n_train=2, n_test_good=1, n_test_defect=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_model_goes_through_the_whole_library(name, with_bottleneck, tiny_demo, held_out, feature_cache_dir, tmp_path):
    run_dir = tmp_path / name
    settings = (
        f"model.name={name}",
        f"data.root={tiny_demo}",
        f"train.cache_dir={feature_cache_dir}",
        "data.image_size=128",
        "train.epochs=1",
        "train.batch_size=8",
        *model_spec(name).smoke_overrides,
    )
    assert main(["train", "--run-dir", str(run_dir), *[f"--{item}" for item in settings]]) == 0
    assert main(["test", "--run", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["protocol"]["model"] == name and len(metrics["per_class"]) == 4

    assert main(["train", "--resume", str(run_dir), "--train.epochs", "2"]) == 0
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2] and all(row["loss"] > 0 for row in log)

    assert main(["calibrate", str(run_dir), "--normal", str(held_out)]) == 0
    images = sorted(tiny_demo.glob("*/test/*/*.png"))
    assert main(["predict", str(run_dir), *map(str, images[:6]), "--out", str(tmp_path / "predictions")]) == 0
    rows = list(csv.DictReader((tmp_path / "predictions" / "predictions.csv").open()))
    assert len(rows) == 6 and {row["decision"] for row in rows} <= {"normal", "anomalous"}

    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    assert_parity(rlr.load(run_dir, "cpu"), onnx_runner.OnnxScorer(run_dir / "onnx" / "model.onnx"), images)


def _mentions(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(string constants, constants compared with ==/!=/in, identifiers and imported modules) of a source file."""
    constants, compared, names = set(), set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            constants.add(node.value)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            compared |= {o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)}
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update([node.module, *(alias.name for alias in node.names)])
    return constants, compared, names


@pytest.mark.parametrize(
    "path", [*sorted((SOURCE / "engine").glob("*.py")), SOURCE / "config.py"], ids=lambda p: p.name
)
def test_engine_and_config_name_no_model(path):
    """No comparison with a model's name, no import from its package, none of its names.

    One model shares its name with the library, whose own name (`import rlr`, the version key of
    provenance.json) is no mention of the model: for it, only comparisons count as naming it.
    """
    constants, compared, names = _mentions(path)
    for name in list_models():
        spec = model_spec(name)
        package = importlib.import_module(spec.config.__module__.rsplit(".", 1)[0])
        assert name not in compared, f"{path.name} branches on model.name == {name!r}"
        if name != rlr.__name__:
            assert name not in constants | names, f"{path.name} names the model {name!r}"
        assert spec.title not in constants | names, f"{path.name} names {spec.title}"
        assert not names & set(package.__all__), f"{path.name} uses {names & set(package.__all__)}"
        assert not any(n.startswith(package.__name__) for n in names), f"{path.name} imports from {package.__name__}"
