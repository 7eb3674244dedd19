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
import openvino

try:  # inside the rlr package
    from rlr.deploy.onnx_runner import ExportedScorer, run_cli
except ImportError:  # copied beside the model, next to rlr_onnx_runner.py
    from rlr_onnx_runner import ExportedScorer, run_cli


def compile_properties(threads: int = 0) -> dict[str, object]:
    """The CPU plugin's properties, stated so that no platform or release picks others.

    float32: on CPUs with bf16 units (AMX, AVX-512 BF16) OpenVINO's default is bf16 and the maps
    would no longer match PyTorch's. LATENCY: one stream that spreads each call over all threads,
    since a call scores one whole batch. `threads` 0 leaves OpenVINO its default, one per CPU this
    process may run on (it honours `taskset`).
    """
    properties: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    return {**properties, "INFERENCE_NUM_THREADS": threads} if threads else properties


class OpenVinoScorer(ExportedScorer):
    """The exported model compiled for OpenVINO's CPU plugin (see `compile_properties`).

    It is compiled for each batch size it is given, with that batch fixed in the shape: on one
    core the fixed shape ran 1.17x faster at batch 1 and 1.05x at batch 16 than the exported
    dynamic batch axis, for about 0.6 s per compile. The last `KEPT_SHAPES` sizes stay compiled
    (a run of full batches and its one shorter last batch).
    """

    KEPT_SHAPES = 2

    def __init__(self, model_path: str | Path, info_path: str | Path | None = None, threads: int = 0) -> None:
        super().__init__(model_path, info_path)
        self.core = openvino.Core()
        self.network = self.core.read_model(str(model_path))
        self.properties = compile_properties(threads)
        self.compiled: dict[int, openvino.CompiledModel] = {}

    def compiled_for(self, batch: int) -> openvino.CompiledModel:
        """The model compiled for `batch` images (the oldest other size dropped beyond KEPT_SHAPES)."""
        if batch not in self.compiled:
            while len(self.compiled) >= self.KEPT_SHAPES:
                del self.compiled[next(iter(self.compiled))]
            network = self.network.clone()
            network.reshape({0: [batch, 3, self.size, self.size]})
            self.compiled[batch] = self.core.compile_model(network, "CPU", self.properties)
        return self.compiled[batch]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.compiled_for(len(images))(np.ascontiguousarray(images, dtype=np.float32))
        return outputs["map"], outputs["score"]


def main(argv: list[str] | None = None) -> int:
    return run_cli(OpenVinoScorer, argv, "OpenVINO")


if __name__ == "__main__":
    sys.exit(main())
