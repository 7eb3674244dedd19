"""Time and memory of rlr.metrics on synthetic MVTec-sized data (default 1,725 maps of 256x256).

Each metric is timed alone (so P-AUROC, P-AP, P-F1max and AUPRO each pay the shared pixel sort)
and then all seven together through one `compute_metrics` call, the way the evaluator uses it.
Memory is tracemalloc's peak of numpy allocations made during a call, above what was allocated
before it (so the inputs themselves are excluded); the process's ru_maxrss is reported too.

    python benchmarks/metrics_speed.py [--n-images 1725] [--size 256] [--seed 0] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage

from rlr.atomic import write_text
from rlr.metrics import METRIC_NAMES, compute_metrics

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "metrics_speed.json"
Scores = dict[str, float | None]


def synthetic_data(n_images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maps, masks and image scores/labels shaped like an MVTec AD test set.

    About half the images are defective, each with 1-3 irregular blobs (noisy ellipses); maps are
    the blurred mask times a random strength plus Gaussian noise, so detection is good, not perfect.
    """
    rng = np.random.default_rng(seed)
    maps = np.empty((n_images, size, size), dtype=np.float32)
    masks = np.zeros((n_images, size, size), dtype=bool)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    for i in range(n_images):
        if rng.random() < 0.5:
            wobble = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 6)
            wobble *= 0.6 / (np.abs(wobble).max() + 1e-6)
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.uniform(0, size, 2)
                ry, rx = rng.uniform(0.03, 0.15, 2) * size
                masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + wobble < 1
        signal = ndimage.gaussian_filter(masks[i].astype(np.float32), 4) * rng.uniform(0.3, 2.0)
        maps[i] = signal + 0.35 * rng.standard_normal((size, size), dtype=np.float32)
    image_scores = maps.max(axis=(1, 2)).astype(np.float64)
    image_labels = masks.any(axis=(1, 2))
    return maps, masks, image_scores, image_labels


def measure(call: Callable[[], Scores]) -> tuple[float, float, Scores]:
    """(seconds, peak MiB of new allocations, result) of one call."""
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    return seconds, (peak - before) / 2**20, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1725)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    maps, masks, image_scores, image_labels = synthetic_data(args.n_images, args.size, args.seed)
    print(
        f"data: {maps.shape} float32 ({maps.nbytes / 2**20:.0f} MiB), "
        f"{masks.mean():.2%} positive pixels, {image_labels.mean():.1%} defective images, "
        f"built in {time.perf_counter() - start:.1f} s"
    )

    tracemalloc.start()
    rows = {}
    for name in METRIC_NAMES:
        seconds, peak, result = measure(
            partial(compute_metrics, image_scores, image_labels, maps, masks, metrics=(name,))
        )
        rows[name] = {"seconds": seconds, "peak_mib": peak, "value": result[name]}
    everything = partial(compute_metrics, image_scores, image_labels, maps, masks)
    seconds, peak, result = measure(everything)
    rows["all seven"] = {"seconds": seconds, "peak_mib": peak, "value": result["mAD"]}
    tracemalloc.stop()
    max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux

    print(f"{'metric':<10} {'seconds':>8} {'peak MiB':>9} {'value':>8}   (all seven: value is mAD)")
    for name, row in rows.items():
        value = "None" if row["value"] is None else f"{row['value']:.4f}"
        print(f"{name:<10} {row['seconds']:8.2f} {row['peak_mib']:9.0f} {value:>8}")
    print(f"process max RSS (data included): {max_rss_mib:.0f} MiB")

    report = {
        "n_images": args.n_images,
        "size": args.size,
        "seed": args.seed,
        "n_pixels": int(maps.size),
        "positive_pixel_fraction": float(masks.mean()),
        "memory_measure": "tracemalloc peak of allocations during the call, inputs excluded",
        "metrics": rows,
        "process_max_rss_mib": max_rss_mib,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
