"""`rlr export --format openvino`: the ONNX graph of the whole scorer converted to OpenVINO IR.

The graph is the one `export_onnx` writes (same inputs, outputs, dynamic batch), converted with
`openvino.convert_model` and saved with float32 weights (`compress_to_fp16=False`: OpenVINO's
default fp16 weights moved the tiny demo model's maps by 2e-3 of their range, float32 by 1e-6).
Beside `model.xml` and `model.bin` go `model.json` (the ONNX export's, plus the OpenVINO version
and a parity check) and the two runner files (see `openvino_runner.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rlr.atomic import write_text
from rlr.deploy.export import (
    INFO_NAME,
    OPSET,
    RUNNER_NAME,
    compare_with_pytorch,
    example_images,
    export_info,
    onnx_bytes,
)
from rlr.deploy.model import Model
from rlr.errors import ConfigError, RlrError, one_line

XML_NAME, BIN_NAME = "model.xml", "model.bin"
OPENVINO_RUNNER_NAME = "rlr_openvino_runner.py"


def export_openvino(model: Model, out_dir: str | Path, opset: int = OPSET, verify: bool = True) -> Path:
    """Write model.xml/.bin, model.json and the runners into `out_dir`; returns the .xml path.

    With `verify`, OpenVINO scores the two noise images of the ONNX check and the largest map
    difference to PyTorch (relative to the map range) is recorded in the JSON.
    """
    try:
        import openvino
    except ImportError:
        raise ConfigError("OpenVINO export needs the openvino package: pip install -e '.[openvino]'") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = example_images(model)
    with tempfile.TemporaryDirectory(prefix=".rlr-openvino-", dir=out_dir) as staging:
        onnx_path = Path(staging) / "model.onnx"
        onnx_path.write_bytes(onnx_bytes(model, example, opset))
        try:
            converted = openvino.convert_model(onnx_path)
            openvino.save_model(converted, Path(staging) / XML_NAME, compress_to_fp16=False)
        except Exception as exc:  # the converter raises many types; one line is what a user can act on
            raise RlrError(f"OpenVINO conversion failed: {type(exc).__name__}: {one_line(exc)}") from None
        for name in (BIN_NAME, XML_NAME):  # weights first: an .xml never points at a missing .bin
            os.replace(Path(staging) / name, out_dir / name)
    info = {
        **export_info(model, opset),
        "engine": {
            "name": "openvino",
            "version": openvino.get_version(),
            "weights": "float32",
            "inference_precision": "f32",
        },
    }
    if verify:
        info["verification"] = _verify(out_dir / XML_NAME, model, example)
    write_text(out_dir / INFO_NAME, json.dumps(info, indent=2) + "\n")
    here = Path(__file__).parent
    shutil.copyfile(here / "onnx_runner.py", out_dir / RUNNER_NAME)
    shutil.copyfile(here / "openvino_runner.py", out_dir / OPENVINO_RUNNER_NAME)
    return out_dir / XML_NAME


def _verify(xml_path: Path, model: Model, example: torch.Tensor) -> dict:
    import openvino

    from rlr.deploy.openvino_runner import compile_properties

    compiled = openvino.Core().compile_model(str(xml_path), "CPU", compile_properties())
    outputs = compiled(example.numpy())
    return compare_with_pytorch(model, outputs["map"], outputs["score"], example)
