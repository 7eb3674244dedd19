"""Train ONE unified model per recipe on the three realmini classes (CPU, offline backbone) and test each.

The exact-paper recipe and the project's best recipe run side by side, each from its own config,
each trained and tested from nothing (its wall time includes feature extraction when the cache is
cold). Writes every run's per-class metrics, means and seconds to JSON and prints the tables.

Usage: python benchmarks/realmini.py [--data ../shared/data/realmini] [--recipes paper plus]
       [--seeds 0 1] [--out benchmarks/results/realmini.json] [key=value overrides for every config]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine_info

from rlr.api import evaluate
from rlr.atomic import write_text
from rlr.config import load_config
from rlr.engine.train import train
from rlr.report.tables import format_table

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "paper": REPO / "configs" / "rlr_realmini_cpu.yaml",  # the paper's recipe, scaled to the CPU budget
    "plus": REPO / "configs" / "rlr_plus_cpu.yaml",  # the project's best recipe, same budget
}


def run_recipe(name: str, seed: int, data: Path, overrides: list[str], keep: Path | None) -> dict:
    """Train and test one recipe with one seed from nothing; its metrics and seconds."""
    config = load_config(RECIPES[name], [f"data.root={data}", f"train.seed={seed}", *overrides])
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = keep / f"{name}-seed{seed}" if keep else Path(scratch) / "run"
        started = time.perf_counter()
        train(config, run_dir, overwrite=True)
        trained = time.perf_counter()
        evaluate(run_dir)
        tested = time.perf_counter()
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    print(f"\n{name}, seed {seed} ({RECIPES[name].relative_to(REPO)}):")
    print(format_table(metrics["per_class"], metrics["mean"]), end="")
    print(f"train (incl. feature extraction) {trained - started:.0f} s, test {tested - trained:.0f} s")
    return {
        "recipe": name,
        "config_file": str(RECIPES[name].relative_to(REPO)),
        "seed": seed,
        "config": config.to_dict(),
        "per_class": metrics["per_class"],
        "mean": metrics["mean"],
        "protocol": metrics["protocol"],
        "seconds": {"train": trained - started, "test": tested - trained, "total": tested - started},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "realmini")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["paper", "plus"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "realmini.json")
    parser.add_argument("--keep-runs", type=Path, help="keep the runs under this folder (default: temporary)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every recipe, key=value")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"realmini data not found at {args.data}; pass --data", file=sys.stderr)
        return 2

    runs = [
        run_recipe(name, seed, args.data, args.overrides, args.keep_runs)
        for name in args.recipes
        for seed in args.seeds
    ]
    result = {
        "command": " ".join(["python", "benchmarks/realmini.py", *sys.argv[1:]]),
        "runs": runs,
        "machine": machine_info(),
    }
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
