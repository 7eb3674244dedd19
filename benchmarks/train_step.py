"""Training speed of one RLR step: the efficient attentions vs the plain masked full-attention reference.

    python benchmarks/train_step.py [--configs cpu paper] [--steps 5] [--warmup 2] [--num-references 1]
                                    [--device cpu] [--threads N] [--out PATH]

A step is the trainer's own, `rlr.engine.step.train_step`: feature jitter, forward, loss
(reconstruction + diversity), backward, Adam step. Its inputs are synthetic feature maps of the
backbone's shapes at 256 px (no backbone runs: it is frozen and outside the step), the same
tensors for both variants, which also start from the same weights (`tests/reference.py`'s
`plain_reference` copies the model); the jitter noise is drawn afresh each step, as in training.
Configs: `cpu` is `rlr.presets.cpu_config()` (Lite0: 40 ch @ 32x32, 112 @ 16x16; widths 64/128,
2 layers, 4 heads, batch 8); `paper` is `configs/rlr_mvtec.yaml` (b6: 72 @ 32x32, 200 @ 16x16;
widths 256/512, 4 layers, 8 heads, batch 4). Each runs with both levels and with the 32x32 level
alone, where attention dominates and the speed target is stated.

Timing: `--warmup` untimed steps per variant, then `--steps` rounds that time one step of each
variant in turn (so drift hits both alike); the median gives samples/s. FLOPs per step are counted
once with `torch.utils.flop_counter.FlopCounterMode` (matmuls, linear layers and attention
kernels; elementwise work is not counted); achieved GFLOP/s is that count over the median step
time, set against this machine's dense float32 matmul GFLOP/s (best of several 2048^2 `torch.mm`),
the practical ceiling. Peak memory: on CPU, the resident-set peak (VmHWM, reset before the steps)
over warm-up plus one step, above the resident set before them, in a fresh process per variant
(Linux only; torch's CPU allocations are invisible to tracemalloc): activations, gradients and
Adam's state. On CUDA, `torch.cuda.max_memory_allocated` above the memory held before the step.
Time on an idle machine: with other jobs on few cores, torch's threads wait on each other and the
efficient step's many small kernels suffer most (`--threads 1` is the robust choice then). The
load average before and after goes into the JSON, written to benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from machine_info import machine_info
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from rlr.atomic import write_text
from rlr.config import RunConfig, load_config
from rlr.engine.build import build_model
from rlr.engine.step import build_optimizer, train_step
from rlr.presets import cpu_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the plain model is the tests' oracle, not part of the package
from tests.reference import plain_reference  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_step.json"
# Channels of out_indices (2, 3), strides 8 and 16; the backbone itself never runs here.
BACKBONE_CHANNELS = {"tf_efficientnet_lite0": (40, 112), "tf_efficientnet_b6.aa_in1k": (72, 200)}
STRIDES = (8, 16)
SCOPES = ("both levels", "32x32 level")
TARGET_SPEEDUP = 4.0  # efficient vs plain, CPU config, 32x32 level


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's counter knows the CUDA attention kernels; the CPU one does the same matmuls.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def load_named(name: str, num_references: int) -> RunConfig:
    extra = (f"model.num_references={num_references}",)
    if name == "cpu":
        return cpu_config(extra)
    return load_config(ROOT / "configs" / "rlr_mvtec.yaml", extra)


@dataclass
class Case:
    """One benchmark case: its config, model, optimizer and clean input features."""

    config: RunConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    features: list[torch.Tensor]


def build_case(name: str, scope: str, num_references: int, device: torch.device) -> Case:
    """The efficient model of one case with its optimizer and features, seeded so every process agrees."""
    config = load_named(name, num_references)
    if config.backbone.out_indices != [2, 3]:
        raise SystemExit(f"{name}: expected backbone.out_indices [2, 3], got {config.backbone.out_indices}")
    channels = list(BACKBONE_CHANNELS[config.backbone.name])
    sizes = [(config.data.image_size // s,) * 2 for s in STRIDES]
    if scope == "32x32 level":
        channels, sizes = channels[:1], sizes[:1]
        config.model.hidden_dims = config.model.hidden_dims[:1]
        config.model.windows = config.model.windows[:1] if config.model.windows else None
    torch.manual_seed(0)
    model = build_model(config, channels, sizes).to(device)
    generator = torch.Generator().manual_seed(1)
    batch = config.train.batch_size
    features = [torch.randn(batch, c, *size, generator=generator).to(device) for c, size in zip(channels, sizes)]
    return Case(config, model, build_optimizer(config, model), features)


def as_plain(case: Case) -> Case:
    """The same case with the plain reference model: same weights, same features, its own optimizer."""
    model = plain_reference(case.model)
    return Case(case.config, model, build_optimizer(case.config, model), case.features)


def step(case: Case) -> None:
    """The trainer's step on the case's features (precomputed: the backbone is outside the step)."""
    train_step(case.config, case.model, case.optimizer, case.features)


def timed_step(case: Case, device: torch.device) -> float:
    started = time.perf_counter()
    step(case)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def step_flops(case: Case) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        step(case)
    return counter.get_total_flops()


def dense_matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 7) -> float:
    """Best float32 `torch.mm` rate on `size`^2 matrices: the ceiling the step's GFLOP/s is set against."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        started = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def peak_memory_mib(name: str, scope: str, variant: str, args: argparse.Namespace) -> float:
    """Peak extra memory of warm-up plus one step of a variant (see the module docstring for how)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        case = build_case(name, scope, args.num_references, device)
        case = as_plain(case) if variant == "plain" else case
        step(case)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(case)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    probe = [
        sys.executable,
        __file__,
        "--memory-probe",
        name,
        scope,
        variant,
        "--num-references",
        str(args.num_references),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(torch.get_num_threads()),
    ]
    done = subprocess.run(probe, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def memory_probe(name: str, scope: str, variant: str, args: argparse.Namespace) -> None:
    """Run in a fresh process: print the resident-set peak (MiB) over warm-up plus one step, above the start.

    The high-water mark is reset first (/proc/self/clear_refs), so building the models does not
    count; ru_maxrss cannot be used, as exec carries the parent's peak over into the child.
    """
    case = build_case(name, scope, args.num_references, torch.device("cpu"))
    case = as_plain(case) if variant == "plain" else case  # the efficient original is freed here
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    for _ in range(max(args.warmup, 0) + 1):
        step(case)
    print((_status_kib("VmHWM") - before) / 1024)


def measure(name: str, scope: str, args: argparse.Namespace, peak_gflops: float) -> list[dict]:
    """Time both variants of one case in this process, on the same inputs, and count their FLOPs."""
    device = torch.device(args.device)
    efficient = build_case(name, scope, args.num_references, device)
    cases = {"efficient": efficient, "plain": as_plain(efficient)}
    for case in cases.values():
        for _ in range(args.warmup):
            step(case)
    times: dict[str, list[float]] = {variant: [] for variant in cases}
    for _ in range(args.steps):
        for variant, case in cases.items():
            times[variant].append(timed_step(case, device))
    print(
        f"{name}, {scope}: median s/step " + ", ".join(f"{v} {statistics.median(t):.3f}" for v, t in times.items()),
        file=sys.stderr,
        flush=True,
    )
    rows = []
    batch = efficient.config.train.batch_size
    for variant, case in cases.items():
        seconds = statistics.median(times[variant])
        flops = step_flops(case)
        rows.append(
            {
                "config": name,
                "levels": scope,
                "variant": variant,
                "batch": batch,
                "samples_per_s": batch / seconds,
                "ms_per_step": 1000 * seconds,
                "gflop_per_step": flops / 1e9,
                "achieved_gflops": flops / seconds / 1e9,
                "fraction_of_matmul_peak": flops / seconds / 1e9 / peak_gflops,
                "peak_memory_mib": peak_memory_mib(name, scope, variant, args),
            }
        )
    rows[0]["speedup_vs_plain"] = rows[0]["samples_per_s"] / rows[1]["samples_per_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=("cpu", "paper"), default=["cpu", "paper"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--num-references", type=int, default=1, help="K learnable references")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--memory-probe", nargs=3, metavar=("CONFIG", "LEVELS", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(*args.memory_probe, args)
        return 0

    device = torch.device(args.device)
    load_before = os.getloadavg()
    peak = dense_matmul_gflops(device)
    rows = [row for name in args.configs for scope in SCOPES for row in measure(name, scope, args, peak)]
    load_after = os.getloadavg()

    print(
        f"one RLR training step, K={args.num_references}, {device.type}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); dense float32 matmul: {peak:.1f} GFLOP/s"
    )
    header = (
        f"{'config':<6} {'levels':<12} {'variant':<9} {'batch':>5} {'samples/s':>9} {'ms/step':>8} "
        f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'of peak':>7} {'peak MiB':>8} {'speedup':>7}"
    )
    print(header)
    for r in rows:
        speedup = f"{r['speedup_vs_plain']:.2f}x" if "speedup_vs_plain" in r else ""
        print(
            f"{r['config']:<6} {r['levels']:<12} {r['variant']:<9} {r['batch']:>5} {r['samples_per_s']:>9.2f} "
            f"{r['ms_per_step']:>8.1f} {r['gflop_per_step']:>10.2f} {r['achieved_gflops']:>8.1f} "
            f"{r['fraction_of_matmul_peak']:>7.1%} {r['peak_memory_mib']:>8.0f} {speedup:>7}"
        )
    target = next(
        (
            r["speedup_vs_plain"]
            for r in rows
            if r["config"] == "cpu" and r["levels"] == "32x32 level" and "speedup_vs_plain" in r
        ),
        None,
    )
    if target is not None:
        verdict = "met" if target >= TARGET_SPEEDUP else "NOT met"
        print(f"target: efficient >= {TARGET_SPEEDUP:g}x plain at 32x32 (CPU config): {target:.2f}x, {verdict}")

    report = {
        "what": "one training step (jitter, forward, loss, backward, Adam) on synthetic 256 px feature maps",
        "num_references": args.num_references,
        "device": device.type,
        "steps": args.steps,
        "warmup": args.warmup,
        "statistic": "median step time over the timed steps; variants interleaved, same inputs and weights",
        "flops": "torch.utils.flop_counter.FlopCounterMode, forward + backward, matmul-like ops only",
        "peak_memory": (
            "cuda: max_memory_allocated above the pre-step allocation"
            if device.type == "cuda"
            else "cpu: VmHWM (reset first) minus VmRSS before warm-up + one step, fresh process per variant"
        ),
        "dense_matmul_gflops": peak,
        "target_speedup": TARGET_SPEEDUP,
        "target_speedup_measured": target,
        "target_met": None if target is None else target >= TARGET_SPEEDUP,
        "results": rows,
        "load_average_1_5_15_min": {"before": load_before, "after": load_after},  # other work on the machine
        **machine_info(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"load average before/after (1, 5, 15 min): {load_before} / {load_after}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
