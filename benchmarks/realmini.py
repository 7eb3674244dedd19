"""Train ONE unified RLR on the three realmini classes (CPU, offline backbone) and test it.

Writes per-class I-AUROC / P-AUROC (and the other metrics) to JSON and prints the table.
Usage: python benchmarks/realmini.py [--data ../shared/data/realmini] [--out benchmarks/results/realmini.json]
       [key=value overrides for the config, e.g. train.epochs=5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlr.atomic import write_text
from rlr.config import load_config
from rlr.engine.evaluate import evaluate
from rlr.engine.train import train
from rlr.report.tables import format_table

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "rlr_realmini_cpu.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "realmini")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "realmini.json")
    parser.add_argument("--run-dir", type=Path, help="keep the run here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"realmini data not found at {args.data}; pass --data", file=sys.stderr)
        return 2

    config = load_config(args.config, [f"data.root={args.data}", *args.overrides])
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run_dir or Path(scratch) / "run"
        started = time.perf_counter()
        train(config, run_dir, overwrite=True)
        trained = time.perf_counter()
        evaluate(run_dir)
        tested = time.perf_counter()
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))

    print(format_table(metrics["per_class"], metrics["mean"]), end="")
    print(f"train (incl. feature extraction) {trained - started:.0f} s, test {tested - trained:.0f} s")
    result = {
        "command": " ".join(["python", "benchmarks/realmini.py", *sys.argv[1:]]),
        "config": config.to_dict(),
        "per_class": metrics["per_class"],
        "mean": metrics["mean"],
        "protocol": metrics["protocol"],
        "seconds": {"train": trained - started, "test": tested - trained},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
