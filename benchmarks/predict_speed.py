"""Prediction speed of the demo config: PyTorch CPU eager vs ONNX Runtime CPU, batch 1 and 16.

    python benchmarks/predict_speed.py [--run RUN] [--repeats 20] [--out PATH]

Without --run, the demo config (`rlr.presets.cpu_config`) is trained for one epoch on the built-in
demo data (speed does not depend on training) and exported to ONNX in a temporary folder. Both
engines score the same preprocessed images held in memory, the whole scorer (backbone,
reconstructors, map, smoothing, score); reading and resizing a file is timed separately, since it
is the same for both. Each setting is warmed up first, then timed `--repeats` times; the median
gives images/s (batch / median) and the per-image latency (median / batch). Thread counts are
each library's default. Writes JSON to benchmarks/results/predict_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnxruntime
import torch
from machine_info import machine_info

import rlr
from rlr.atomic import write_text
from rlr.data.demo import ensure_demo
from rlr.engine.train import train
from rlr.export import export_onnx
from rlr.onnx_runner import OnnxScorer
from rlr.presets import cpu_config

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "predict_speed.json"
BATCHES = (1, 16)
WARMUP = 3


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    """Median wall time of `step` over `repeats` calls, after WARMUP untimed calls."""
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def prepare_run(folder: Path) -> Path:
    """The demo config trained for one epoch on the demo data, on the CPU."""
    config = cpu_config((f"data.root={ensure_demo()}", "train.epochs=1", "train.device=cpu"))
    return train(config, folder / "run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train the demo config for one epoch)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rlr-speed-") as tmp:
        run_dir = args.run or prepare_run(Path(tmp))
        model = rlr.load(run_dir, "cpu")
        onnx_path = export_onnx(model, Path(tmp) / "onnx", verify=False)
        runner = OnnxScorer(onnx_path)
        paths = sorted(Path(model.config.data.root).glob("*/test/*/*.png"))[: max(BATCHES)]
        read_one = median_seconds(lambda: model.prepare(paths[0]), args.repeats)
        images = torch.stack([model.prepare(p).pixels for p in paths])

        rows = []
        for batch in BATCHES:
            inputs, arrays = images[:batch], images[:batch].numpy()
            with torch.inference_mode():
                eager = median_seconds(lambda x=inputs: model.scorer(x), args.repeats)
            ort = median_seconds(lambda x=arrays: runner.run(x), args.repeats)
            for engine, seconds in (("PyTorch CPU eager", eager), ("ONNX Runtime CPU", ort)):
                rows.append({"engine": engine, "batch": batch, "images_per_s": batch / seconds,
                             "ms_per_image": 1000 * seconds / batch})

    print(f"demo config, {model.image_size} px; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {runner.session.get_providers()[0]}")
    print(f"{'engine':<20} {'batch':>5} {'images/s':>9} {'ms/image':>9}")
    for row in rows:
        print(f"{row['engine']:<20} {row['batch']:>5} {row['images_per_s']:>9.1f} {row['ms_per_image']:>9.1f}")
    print(f"reading + resizing one demo PNG: {1000 * read_one:.1f} ms (same for both engines)")

    report = {
        "config": "rlr.presets.cpu_config (demo)",
        "image_size": model.image_size,
        "repeats": args.repeats,
        "warmup": WARMUP,
        "statistic": "median over repeats",
        "results": rows,
        "read_and_resize_ms": 1000 * read_one,
        "onnxruntime": onnxruntime.__version__,
        **machine_info(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
