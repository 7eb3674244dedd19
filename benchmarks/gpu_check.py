"""GPU readiness: the paper's RLR config in fp32 and bf16 (optionally torch.compile), then the real trainer.

    benchmarks/gpu_check.sh [--steps 300] [--warmup 20] [--compile] [--cpu] [--model paper|cpu] [--out PATH]

1. Speed. The trainer's own step (`rlr.engine.step.train_step`: jitter, forward under the precision's
   autocast, loss in float32, backward, Adam; it reads the loss, so every step ends synchronised) on the paper's model (`configs/rlr_mvtec.yaml`: tf_efficientnet_b6
   levels of 72 channels at 32x32 and 200 at 16x16 for 256 px, widths 256/512, 4 layers, 8 heads,
   batch 4), fed random features of those shapes: the backbone is frozen and its features are cached,
   so it is not part of a step and no weights are needed. Per variant: `--warmup` untimed steps (they
   include compiling), then `--steps` steps timed as one stretch, synchronised at both ends;
   samples/s = batch x steps / seconds. Peak memory: `torch.cuda.max_memory_allocated` over the
   variant (reset before it); on the CPU, the process's resident high-water mark so far (ru_maxrss).
2. The real trainer (`rlr.engine.train.train`) on a small generated demo set on the same device, for
   each precision (and compile): one epoch, then resumed to two; the losses must be finite.
3. With two or more GPUs: `torchrun` with one process per GPU (NCCL) on the same demo set; the
   training log must show identical replicas.

`--cpu` runs it all on the CPU with a few steps, the small CPU model (`configs/rlr_cpu.yaml`: Lite0 levels
of 40 and 112 channels, widths 64/128, 2 layers, batch 8) and 128 px demo images: a check of the script
and the code paths, not a benchmark (bf16 is emulated on most CPUs: several times slower than fp32).
Writes JSON to benchmarks/results/gpu_check.json (with --cpu: gpu_check_cpu.json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from rlr.atomic import write_text
from rlr.config import RunConfig, load_config
from rlr.data.demo import generate_demo
from rlr.engine.build import build_model
from rlr.engine.runs import resume_state
from rlr.engine.step import build_optimizer, train_step
from rlr.engine.train import train
from rlr.presets import cpu_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
# config file, and its backbone's (channels, side) at out_indices (2, 3) for 256 px
MODELS = {
    "paper": (ROOT / "configs" / "rlr_mvtec.yaml", ((72, 32), (200, 16))),  # tf_efficientnet_b6
    "cpu": (ROOT / "configs" / "rlr_cpu.yaml", ((40, 32), (112, 16))),  # tf_efficientnet_lite0
}


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed(
    config: RunConfig, shapes: tuple, device: torch.device, precision: str, compiled: bool, steps: int, warmup: int
) -> dict:
    """Samples/s and peak memory of the model's training step in one precision, on random features of `shapes`."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    channels = [c for c, _ in shapes]
    sizes = [(side, side) for _, side in shapes]
    model = build_model(config, channels, sizes).to(device)
    net = torch.compile(model) if compiled else model
    optimizer = build_optimizer(config, model)
    batch = config.train.batch_size
    features = [torch.randn(batch, c, side, side, device=device) for c, side in shapes]

    stepped = replace(config, train=replace(config.train, precision=precision))

    def step() -> float:
        return train_step(stepped, model, optimizer, features, net=net)

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "precision": precision,
        "compile": compiled,
        "batch": batch,
        "steps": steps,
        "samples_per_s": batch * steps / seconds,
        "ms_per_step": 1000 * seconds / steps,
        "warmup_seconds": warmup_seconds,
        "peak_memory_mib": peak_memory_mib(device),
        "final_loss": float(loss),
    }


def demo_config(root: Path, cache: Path, device: torch.device, *extra: str) -> RunConfig:
    """The small CPU preset on the demo set; on the CPU at 128 px (Lite0 maps of 16x16 and 8x8, windows 5 and 3)."""
    small = ("data.image_size=128", "model.windows=[5, 3]") if device.type == "cpu" else ()
    where = (f"data.root={root}", f"train.cache_dir={cache}", f"train.device={device.type}")
    return cpu_config((*where, "train.epochs=1", *small, *extra))


def trainer_check(root: Path, cache: Path, work: Path, device: torch.device, precision: str, compiled: bool) -> dict:
    """The real trainer: one epoch, resumed to two; returns the seconds and the losses."""
    config = demo_config(root, cache, device, f"train.precision={precision}", f"train.compile={str(compiled).lower()}")
    run_dir = work / f"train-{precision}-{'compiled' if compiled else 'eager'}"
    started = time.perf_counter()
    train(config, run_dir)
    config, state = resume_state(run_dir, epochs=2)
    train(config, run_dir, resume=state)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log]
    ok = [row["epoch"] for row in log] == [1, 2] and all(math.isfinite(x) for x in losses)
    seconds = time.perf_counter() - started
    return {"precision": precision, "compile": compiled, "seconds": seconds, "losses": losses, "ok": ok}


def ddp_check(root: Path, cache: Path, work: Path, processes: int) -> dict:
    """torchrun with one process per GPU for two epochs; the replicas must agree."""
    run_dir = work / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "rlr",
        "train",
        "--run-dir",
        str(run_dir),
        "--config",
        str(ROOT / "configs" / "rlr_cpu.yaml"),
        f"--data.root={root}",
        f"--train.cache_dir={cache}",
        "--train.device=cuda",
        "--train.epochs=2",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"processes": processes, "ok": False, "error": done.stderr[-2000:]}
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    difference = max(row["replica_max_difference"] for row in log)
    return {
        "processes": processes,
        "seconds": time.perf_counter() - started,
        "losses": [r["loss"] for r in log],
        "replica_max_difference": difference,
        "ok": difference == 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (slow; checks the script)")
    parser.add_argument("--steps", type=int, help="timed steps per variant (default: 300 on GPU, 3 with --cpu)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 20 on GPU, 1 with --cpu)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    parser.add_argument("--model", choices=sorted(MODELS), help="timed model (default: paper; with --cpu: cpu)")
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/gpu_check[_cpu].json)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device visible; run with --cpu to check the script on the CPU")
    device = torch.device("cpu" if args.cpu else "cuda")
    steps = args.steps or (3 if args.cpu else 300)
    warmup = args.warmup if args.warmup is not None else (1 if args.cpu else 20)
    out = args.out or RESULTS / ("gpu_check_cpu.json" if args.cpu else "gpu_check.json")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), torch {torch.__version__}")

    model = args.model or ("cpu" if args.cpu else "paper")
    config_file, shapes = MODELS[model]
    config = load_config(config_file)
    print(f"timed: {model} model ({config_file.name}), batch {config.train.batch_size}")
    variants = [(p, c) for c in ([False, True] if args.compile else [False]) for p in ("fp32", "bf16")]
    rows = []
    print(f"{'precision':<9} {'compile':<7} {'samples/s':>9} {'ms/step':>8} {'peak MiB':>9} {'warm-up s':>9}")
    for precision, compiled in variants:
        row = speed(config, shapes, device, precision, compiled, steps, warmup)
        rows.append(row)
        print(
            f"{precision:<9} {str(compiled):<7} {row['samples_per_s']:>9.2f} {row['ms_per_step']:>8.1f} "
            f"{row['peak_memory_mib']:>9.0f} {row['warmup_seconds']:>9.1f}"
        )

    with tempfile.TemporaryDirectory(prefix="rlr-gpu-check-") as tmp:
        work = Path(tmp)
        size = 128 if device.type == "cpu" else 256
        root = generate_demo(work / "demo", seed=0, image_size=size, n_train=6, n_test_good=1, n_test_defect=1)
        checks = [trainer_check(root, work / "features", work, device, p, c) for p, c in variants]
        for check in checks:
            print(
                f"trainer {check['precision']}{' compiled' if check['compile'] else ''}: "
                f"{'ok' if check['ok'] else 'FAILED'}, losses {', '.join(f'{x:.4f}' for x in check['losses'])}, "
                f"{check['seconds']:.1f} s"
            )
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        ddp = ddp_check(root, work / "features", work, gpus) if gpus >= 2 else None
        if ddp is not None:
            print(f"torchrun x{gpus}: {'ok' if ddp['ok'] else 'FAILED'} {ddp.get('error', '')}")

    report = {
        "what": "RLR training step on random features of the backbone's shapes, "
        "then the real trainer on generated demo data",
        "model": model,
        "config": config_file.name,
        "device": str(device),
        "device_name": name,
        "peak_memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process ru_maxrss so far",
        "speed": rows,
        "trainer": checks,
        "ddp": ddp,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(c["ok"] for c in checks) and (ddp is None or ddp["ok"]) else 1


if __name__ == "__main__":
    sys.exit(main())
