"""Prediction speed of the demo config: PyTorch CPU eager, ONNX Runtime CPU and OpenVINO CPU, batch 1 and 16.

    python benchmarks/predict_speed.py [--run RUN] [--repeats 20] [--batches 1 16] [--threads 0] [--out PATH]

Without --run, the demo config (`rlr.presets.cpu_config`) is trained for one epoch on the built-in
demo data (speed does not depend on training) and exported to ONNX and OpenVINO in a temporary
folder. Every engine scores the same preprocessed images held in memory, the whole scorer
(backbone, reconstructors, map, smoothing, score); reading and resizing a file is timed
separately, since it is the same for all. Each setting is warmed up first, then timed `--repeats`
times; the median gives images/s (batch / median) and the per-image latency (median / batch).
Thread counts are each library's default unless --threads sets them all (the JSON records which).
Each exported engine's maps and scores on the largest batch are set against PyTorch's (largest
difference relative to the map range), so a speed-up that changed the numbers shows in the same
table. FLOPs per image are counted once on PyTorch's graph with
`torch.utils.flop_counter.FlopCounterMode` (convolutions, matmuls, linear layers, attention;
elementwise work is not counted), so every engine is credited with the same work; achieved
GFLOP/s is that count times images/s, set against this machine's dense float32 matmul GFLOP/s
(best 2048^2 `torch.mm`, as in train_step.py), the practical ceiling. Without the openvino
package its rows are left out. Writes JSON to benchmarks/results/predict_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnxruntime
import torch
from machine_info import machine_info
from torch.utils.flop_counter import FlopCounterMode
from train_step import CPU_ATTENTION_FLOPS, dense_matmul_gflops

import rlr
from rlr.atomic import write_text
from rlr.data.demo import ensure_demo
from rlr.deploy.export import compare_with_pytorch, export_onnx
from rlr.deploy.model import Model
from rlr.deploy.onnx_runner import OnnxScorer
from rlr.engine.train import train
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


def flops_per_image(model: Model, image: torch.Tensor) -> int:
    """Counted FLOPs of the whole scorer on one image (see the module docstring for what counts)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter, torch.inference_mode():
        model.scorer(image[None])
    return counter.get_total_flops()


def openvino_runner(model: Model, folder: Path, threads: int) -> tuple[Callable | None, str | None]:
    """OpenVINO's `run` on the exported scorer and its version, or (None, None) without openvino."""
    try:
        import openvino
    except ImportError:
        return None, None
    from rlr.deploy.openvino_export import export_openvino
    from rlr.deploy.openvino_runner import OpenVinoScorer

    return OpenVinoScorer(export_openvino(model, folder, verify=False), threads=threads).run, openvino.get_version()


def prepare_run(folder: Path) -> Path:
    """The demo config trained for one epoch on the demo data, on the CPU."""
    config = cpu_config((f"data.root={ensure_demo()}", "train.epochs=1", "train.device=cpu"))
    return train(config, folder / "run")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train the demo config for one epoch)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes (default 1 16)")
    parser.add_argument("--threads", type=int, default=0, help="threads of every engine (default 0: their own)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="rlr-speed-") as tmp:
        run_dir = args.run or prepare_run(Path(tmp))
        model = rlr.load(run_dir, "cpu")
        onnx_path = export_onnx(model, Path(tmp) / "onnx", verify=False)
        runner = OnnxScorer(onnx_path, threads=args.threads)
        ov_run, ov_version = openvino_runner(model, Path(tmp) / "openvino", args.threads)
        paths = sorted(Path(model.config.data.root).glob("*/test/*/*.png"))[: max(args.batches)]
        read_one = median_seconds(lambda: model.prepare(paths[0]), args.repeats)
        images = torch.stack([model.prepare(p).pixels for p in paths])
        flops = flops_per_image(model, images[0])
        peak = dense_matmul_gflops(torch.device("cpu"))

        exported = {"ONNX Runtime CPU": runner.run, **({"OpenVINO CPU": ov_run} if ov_run else {})}
        parity = {
            name: {**compare_with_pytorch(model, *run(images.numpy()), images), "inputs": f"{len(images)} demo images"}
            for name, run in exported.items()
        }
        rows = []
        for batch in args.batches:
            inputs, arrays = images[:batch], images[:batch].numpy()
            with torch.inference_mode():
                timed = [("PyTorch CPU eager", median_seconds(lambda x=inputs: model.scorer(x), args.repeats))]
            timed += [
                (name, median_seconds(lambda x=arrays, r=run: r(x), args.repeats)) for name, run in exported.items()
            ]
            for engine, seconds in timed:
                achieved = flops * batch / seconds / 1e9
                rows.append(
                    {
                        "engine": engine,
                        "batch": batch,
                        "images_per_s": batch / seconds,
                        "ms_per_image": 1000 * seconds / batch,
                        "achieved_gflops": achieved,
                        "fraction_of_matmul_peak": achieved / peak,
                    }
                )

    print(
        f"demo config, {model.image_size} px; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"onnxruntime {onnxruntime.__version__}, openvino {ov_version or 'not installed'}"
    )
    print(f"{flops / 1e9:.2f} GFLOP per image (counted); dense float32 matmul: {peak:.1f} GFLOP/s")
    print(f"{'engine':<20} {'batch':>5} {'images/s':>9} {'ms/image':>9} {'GFLOP/s':>8} {'of peak':>7}")
    for row in rows:
        print(
            f"{row['engine']:<20} {row['batch']:>5} {row['images_per_s']:>9.1f} {row['ms_per_image']:>9.1f} "
            f"{row['achieved_gflops']:>8.1f} {row['fraction_of_matmul_peak']:>7.1%}"
        )
    print(f"reading + resizing one demo PNG: {1000 * read_one:.1f} ms (same for every engine)")
    for name, check in parity.items():
        print(f"{name} vs PyTorch: map {check['max_map_difference_relative_to_range']:.1e} of its range")

    report = {
        "config": "rlr.presets.cpu_config (demo)",
        "image_size": model.image_size,
        "repeats": args.repeats,
        "warmup": WARMUP,
        "statistic": "median over repeats",
        "threads": args.threads or "each library's default",
        "results": rows,
        "parity_with_pytorch": parity,
        "read_and_resize_ms": 1000 * read_one,
        "gflop_per_image": flops / 1e9,
        "flops": "torch.utils.flop_counter.FlopCounterMode on the PyTorch scorer, batch 1, matmul-like ops and convolutions",
        "dense_matmul_gflops": peak,
        "onnxruntime": onnxruntime.__version__,
        "openvino": ov_version,
        "load_average": os.getloadavg(),
        **machine_info(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
