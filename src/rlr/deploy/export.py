"""Export a run's whole scorer to ONNX, with a JSON of its preprocessing and thresholds.

The graph is `deploy.model.Scorer`: images (B, 3, S, S) float32 RGB in [0, 1] -> backbone (with its
own normalisation and 3x3 smoothing) -> RLR reconstructors -> anomaly map -> Gaussian smoothing
-> outputs `map` (B, S, S) and `score` (B,). The batch axis
is dynamic; the image size is fixed. Reading and resizing the image stays outside the graph and
is described in the JSON; `onnx_runner.py` (copied beside the model) does it with Pillow.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from rlr import __version__
from rlr.atomic import write_bytes, write_text
from rlr.data.transforms import RESIZE_DESCRIPTIONS
from rlr.deploy.model import Model
from rlr.errors import RlrError, one_line

OPSET = 18
MODEL_NAME = "model.onnx"
INFO_NAME = "model.json"
RUNNER_NAME = "rlr_onnx_runner.py"
INPUT_NAME, MAP_NAME, SCORE_NAME = "images", "map", "score"


def export_onnx(model: Model, out_dir: str | Path, opset: int = OPSET, verify: bool = True) -> Path:
    """Write model.onnx, model.json and the standalone runner into `out_dir`; returns the ONNX path.

    With `verify`, onnxruntime scores two synthetic images and the largest map difference to
    PyTorch (relative to the map range) is recorded in the JSON.
    """
    out_dir = Path(out_dir)
    example = example_images(model)
    onnx_path = out_dir / MODEL_NAME
    write_bytes(onnx_path, onnx_bytes(model, example, opset))
    info = export_info(model, opset)
    if verify:
        info["verification"] = _verify(model, onnx_path, example)
    write_text(out_dir / INFO_NAME, json.dumps(info, indent=2) + "\n")
    shutil.copyfile(Path(__file__).with_name("onnx_runner.py"), out_dir / RUNNER_NAME)
    return onnx_path


def example_images(model: Model) -> torch.Tensor:
    """Two fixed uniform-noise images: what the graph is traced with and what parity is checked on."""
    size = model.image_size
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def onnx_bytes(model: Model, example: torch.Tensor, opset: int = OPSET) -> bytes:
    """The whole scorer traced to an ONNX graph with a dynamic batch axis (see the module docstring)."""
    scorer = model.scorer.to("cpu")
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes baked in: S is fixed by design
            torch.onnx.export(
                scorer,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[MAP_NAME, SCORE_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, MAP_NAME: {0: "batch"}, SCORE_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types; one line is what a user can act on
        raise RlrError(f"ONNX export failed: {type(exc).__name__}: {one_line(exc)}") from None
    finally:
        scorer.to(model.device)
    return without_dead_nan_guards(buffer.getvalue())


def without_dead_nan_guards(graph: bytes) -> bytes:
    """The ONNX graph without the NaN guards after attention softmaxes whose rows never lose every key.

    torch.onnx follows each masked attention's softmax with Where(IsNaN(p), 0, p), for rows whose
    keys are all masked. MLKA's mask is a constant that leaves keys in every row, so the guard
    never fires on finite inputs; yet it is two more passes over the largest tensor of the graph
    (B x heads x HW x HW) and it hides the attention from OpenVINO's fused attention kernel: without
    it the CPU config's scorer ran 1.55x faster on OpenVINO and 1.37x on ONNX Runtime at batch 16
    on one core, with the same outputs (README, "Where the time goes"). A guard is kept unless the
    softmax reads the scores' MatMul directly, or that plus a constant mask.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(graph)
    nodes = proto.graph.node
    producer = {output: node for node in nodes for output in node.output}
    constants = {t.name: t for t in proto.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in nodes if n.op_type == "Constant" and n.attribute})

    def rows_keep_a_key(softmax: onnx.NodeProto) -> bool:
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
        scores = producer.get(softmax.input[0])
        if axis != -1 or scores is None or scores.op_type not in ("MatMul", "Add"):
            return False
        if scores.op_type == "MatMul":
            return True
        masks = [numpy_helper.to_array(constants[i]) for i in scores.input if i in constants]
        products = [producer.get(i) for i in scores.input if i not in constants]
        if len(masks) != 1 or len(products) != 1 or products[0] is None or products[0].op_type != "MatMul":
            return False
        return bool(np.isfinite(np.atleast_1d(masks[0])).any(axis=-1).all())

    outputs = {o.name for o in proto.graph.output}
    bypass: dict[str, str] = {}
    for node in nodes:
        test = producer.get(node.input[0]) if node.op_type == "Where" else None
        if test is None or test.op_type != "IsNaN" or test.input[0] != node.input[2] or node.output[0] in outputs:
            continue
        softmax = producer.get(node.input[2])
        if softmax is not None and softmax.op_type == "Softmax" and rows_keep_a_key(softmax):
            bypass[node.output[0]] = node.input[2]
    if not bypass:
        return graph
    kept = [node for node in nodes if not (node.output and node.output[0] in bypass)]
    for node in kept:
        node.input[:] = [bypass.get(name, name) for name in node.input]
    while True:  # the guards' IsNaN and zero constants are now read by nothing
        read = {name for node in kept for name in node.input} | outputs
        unread = [node for node in kept if node.op_type in ("IsNaN", "Constant") and node.output[0] not in read]
        if not unread:
            break
        kept = [node for node in kept if node not in unread]
    del nodes[:]
    nodes.extend(kept)
    return proto.SerializeToString()


def export_info(model: Model, opset: int) -> dict:
    """Everything a runner needs besides the graph: preprocessing, outputs, thresholds, provenance."""
    thresholds = model.thresholds
    return {
        "format": 1,
        "rlr_version": __version__,
        "opset": opset,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, model.image_size, model.image_size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "range": [0.0, 1.0],
        },
        "preprocessing": {
            "image_size": model.image_size,
            "orientation": "EXIF orientation applied",
            "modes": "8-bit modes / 255 (alpha dropped, grey repeated to RGB); 16-bit / 65535",
            "resize_mode": model.config.data.resize,
            "resize": f"bilinear with antialiasing, float pixels, clamped to [0, 1]; aspect ratio: "
            f"{RESIZE_DESCRIPTIONS[model.config.data.resize]}",
            "normalisation": "inside the graph (the backbone's own mean/std)",
        },
        "outputs": {
            MAP_NAME: f"(batch, {model.image_size}, {model.image_size}) anomaly map, Gaussian sigma "
            f"{model.config.eval.pixel_map_sigma} (0 = unsmoothed)",
            SCORE_NAME: f"(batch,) image score: {model.score_description}",
        },
        "decision": "anomalous when score > threshold",
        "thresholds": None
        if thresholds is None
        else {"global": thresholds.global_threshold, "per_class": dict(thresholds.per_class)},
        "classes": model.class_names,
        "run": {"name": model.config.name, "checkpoint_sha256": model.checkpoint_digest},
    }


def _verify(model: Model, onnx_path: Path, example: torch.Tensor) -> dict:
    try:
        import onnxruntime
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return compare_with_pytorch(model, *session.run([MAP_NAME, SCORE_NAME], {INPUT_NAME: example.numpy()}), example)


def compare_with_pytorch(model: Model, maps: np.ndarray, scores: np.ndarray, example: torch.Tensor) -> dict:
    """Largest map and score differences of an exported engine's outputs on `example` to PyTorch's."""
    with torch.inference_mode():
        ref_maps, ref_scores = (t.cpu().numpy() for t in model.scorer(example.to(model.device)))
    span = float(ref_maps.max() - ref_maps.min()) or 1.0
    return {
        "inputs": "2 uniform-noise images",
        "max_map_difference_relative_to_range": float(np.abs(maps - ref_maps).max() / span),
        "max_score_difference_relative_to_range": float(np.abs(scores - ref_scores).max() / span),
    }
