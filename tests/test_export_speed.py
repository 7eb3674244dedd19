"""The export's speed-ups keep the numbers: dead NaN guards dropped only where provably dead,
OpenVINO compiled in float32 for a fixed batch, and the profile's parts cover the whole graph."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlr.cli import main
from rlr.deploy.export import without_dead_nan_guards
from rlr.engine.train import train
from rlr.models.layers.attention import MaskedAttention, window_mask

from .conftest import tiny_config

onnx = pytest.importorskip("onnx", reason="the export extra is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra is not installed")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class FarAttention(nn.Module):
    """MLKA's shape of attention: every query sees the keys outside its window (the mask a constant)."""

    def __init__(self, allowed: torch.Tensor) -> None:
        super().__init__()
        self.attention = MaskedAttention(8, 2)
        self.register_buffer("allowed", allowed)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.attention(tokens, tokens, tokens, self.allowed)


def _exported(module: nn.Module, tokens: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (tokens,), buffer, input_names=["tokens"], opset_version=18, dynamo=False)
    return buffer.getvalue()


def _op_types(graph: bytes) -> list[str]:
    return [node.op_type for node in onnx.load_from_string(graph).graph.node]


def _run(graph: bytes, tokens: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    return session.run(None, {"tokens": tokens.numpy()})[0]


def test_guard_of_a_mask_that_leaves_keys_in_every_row_is_dropped_with_the_same_outputs():
    module = FarAttention(~window_mask(4, 4, 3))
    tokens = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    graph = _exported(module, tokens)
    assert "IsNaN" in _op_types(graph)  # what torch.onnx writes: the case the rewrite is for
    lean = without_dead_nan_guards(graph)
    onnx.checker.check_model(onnx.load_from_string(lean))
    assert "IsNaN" not in _op_types(lean)
    assert len(_op_types(lean)) == len(_op_types(graph)) - 3  # Where, IsNaN and the guard's zero
    with torch.no_grad():
        expected = module(tokens).numpy()
    np.testing.assert_allclose(_run(lean, tokens), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(_run(lean, tokens), _run(graph, tokens))


def test_guard_is_kept_when_a_row_has_every_key_masked():
    allowed = ~window_mask(4, 4, 3)
    allowed[5] = False  # query 5 sees nothing: the guard is what turns its NaN row into zeros
    tokens = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    graph = _exported(FarAttention(allowed), tokens)
    assert without_dead_nan_guards(graph) == graph


@pytest.fixture(scope="module")
def openvino_export(tiny_demo, feature_cache_dir, tmp_path_factory):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    config = tiny_config(tiny_demo, feature_cache_dir, "train.epochs=1")
    run_dir = train(config, tmp_path_factory.mktemp("runs") / "tiny")
    assert main(["export", str(run_dir), "--format", "openvino"]) == 0
    return run_dir, run_dir / "openvino" / "model.xml"


def test_openvino_scorer_compiles_float32_for_each_batch_size_and_keeps_the_last_two(openvino_export):
    import openvino

    from rlr.deploy.openvino_runner import OpenVinoScorer

    _, xml = openvino_export
    scorer = OpenVinoScorer(xml, threads=1)
    images = np.random.default_rng(0).random((3, 3, 128, 128), dtype=np.float32)
    maps, scores = {}, {}
    for batch in (3, 1, 2):
        maps[batch], scores[batch] = scorer.run(images[:batch])
    assert sorted(scorer.compiled) == [1, 2]
    compiled = scorer.compiled_for(2)
    assert compiled.input(0).get_partial_shape() == openvino.PartialShape([2, 3, 128, 128])
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32  # bf16 where the CPU has it
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    span = np.ptp(maps[3])
    for batch in (1, 2):  # one image's result does not depend on the batch it was compiled for
        assert np.abs(maps[batch] - maps[3][:batch]).max() / span < 1e-6
        assert np.abs(scores[batch] - scores[3][:batch]).max() / span < 1e-6
    assert "IsNaN" not in {op.get_type_name() for op in scorer.network.get_ops()}


def test_profile_puts_every_layer_in_a_part_and_writes_its_json(openvino_export, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import profile_openvino

    run_dir, xml = openvino_export
    out = tmp_path / "profile.json"
    args = ["--run", str(run_dir), "--export", str(xml.parent), "--batch", "2", "--repeats", "1", "--out", str(out)]
    assert profile_openvino.main(args) == 0
    report = json.loads(out.read_text())
    assert report["threads"] == 1 and report["export"] == "reused" and report["batch"] == 2
    parts = report["openvino_profile"]["parts"]
    assert set(parts) == set(profile_openvino.PARTS)
    assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0)
    for part in ("backbone", "reconstruction", "scoring: upsampling", "scoring: gaussian smoothing"):
        assert parts[part]["ms_per_image"] > 0, part
    assert len(report["openvino_profile"]["top_layers"]) == profile_openvino.TOP_LAYERS
    eager = report["pytorch_profile"]["shares"]
    assert sum(eager.values()) == pytest.approx(1.0) and min(eager.values()) > 0

    import openvino

    network = openvino.Core().read_model(str(xml))
    parts_of = profile_openvino.part_of_each_op(network)
    by_type: dict[str, set[str]] = {}
    for op in network.get_ops():
        by_type.setdefault(op.get_type_name(), set()).add(parts_of[op.get_friendly_name()])
    assert by_type["Interpolate"] == {"scoring: upsampling"}
    assert by_type["Parameter"] == by_type["Result"] == {"other"}
    assert by_type["ReduceMax"] == {"scoring: image score"}
    assert by_type["Convolution"] == {"backbone", "scoring: gaussian smoothing"}
    assert by_type["Softmax"] == {"reconstruction"}
    reads_input = [
        op for op in network.get_ops() if any(v.get_node().get_type_name() == "Parameter" for v in op.input_values())
    ]
    assert reads_input and {parts_of[op.get_friendly_name()] for op in reads_input} == {"backbone"}  # normalisation
