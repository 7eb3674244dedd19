"""Export formats by name, above both exporters (the OpenVINO exporter builds on the ONNX one)."""

from __future__ import annotations

from pathlib import Path

from rlr.deploy.export import export_onnx
from rlr.deploy.model import Model
from rlr.deploy.openvino_export import export_openvino
from rlr.errors import ConfigError

EXPORTERS = {"onnx": export_onnx, "openvino": export_openvino}


def export(model: Model, fmt: str, out_dir: str | Path) -> Path:
    """Write `model` in format `fmt` ('onnx', or 'openvino': the ONNX graph converted to OpenVINO IR)."""
    if fmt not in EXPORTERS:
        raise ConfigError(f"unknown export format '{fmt}' (known: {', '.join(EXPORTERS)})")
    return EXPORTERS[fmt](model, out_dir)
