"""Score images with an OpenVINO export of an rlr model using only openvino, numpy and Pillow.

`rlr export --format openvino` copies this file beside `model.xml`, `model.bin` and `model.json`,
together with `rlr_onnx_runner.py`, which holds the reading, thresholds and command line both
runners share (it needs onnxruntime only for its own engine):

    python rlr_openvino_runner.py model.xml image1.png folder/ "cam*/**/*.png" [--class bottle]

prints `path,score,threshold,decision` lines, skipping unreadable files as the ONNX runner does.
In Python: `OpenVinoScorer("model.xml").predict(paths)`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

try:  # inside the rlr package
    from rlr.deploy.onnx_runner import ExportedScorer, run_cli
except ImportError:  # copied beside the model, next to rlr_onnx_runner.py
    from rlr_onnx_runner import ExportedScorer, run_cli

#: float32 everywhere: on CPUs with bf16 units OpenVINO would otherwise compute in bf16 and the
#: maps would no longer match PyTorch's.
CPU_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


class OpenVinoScorer(ExportedScorer):
    """The exported model compiled for OpenVINO's CPU plugin (`threads` 0: its default)."""

    def __init__(self, model_path: str | Path, info_path: str | Path | None = None, threads: int = 0) -> None:
        import openvino

        super().__init__(model_path, info_path)
        config = {**CPU_CONFIG, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        self.compiled = openvino.Core().compile_model(str(model_path), "CPU", config)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.compiled(np.ascontiguousarray(images, dtype=np.float32))
        return outputs["map"], outputs["score"]


def main(argv: list[str] | None = None) -> int:
    return run_cli(OpenVinoScorer, argv, "OpenVINO")


if __name__ == "__main__":
    sys.exit(main())
