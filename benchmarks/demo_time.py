"""Wall time of `rlr demo` as a new user meets it: generate the data, extract features, train, test, report.

    python benchmarks/demo_time.py [--out PATH]

Runs `python -m rlr demo` in a fresh process with an empty `$RLR_CACHE_DIR` (so the demo data and
the feature cache are built from nothing, as on a first run) in an empty working folder (where
`runs/` goes), and times the whole command, process start-up and imports included. The phase split
comes from the run itself: seconds per epoch from its train_log.jsonl, the rest from the wall
clock. Target: under 10 minutes on this project's 2-core CPU machine. Writes
benchmarks/results/demo_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_info import machine_info

from rlr.atomic import write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "demo_time.json"
TARGET_SECONDS = 600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rlr-demo-time-") as tmp:
        scratch = Path(tmp)
        env = {**os.environ, "RLR_CACHE_DIR": str(scratch / "cache")}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "rlr", "demo"], cwd=scratch, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            print(f"rlr demo failed (exit {done.returncode})", file=sys.stderr)
            return 1
        (run_dir,) = (scratch / "runs").iterdir()
        history = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))

    training = sum(record["seconds"] for record in history)
    print(done.stdout.strip().splitlines()[-1])
    print(
        f"rlr demo from nothing: {seconds:.0f} s wall ({seconds / 60:.1f} min; target {TARGET_SECONDS / 60:.0f} min), "
        f"of which {training:.0f} s in {len(history)} training epochs; "
        f"mean I-AUROC {100 * metrics['mean']['I-AUROC']:.1f}, P-AUROC {100 * metrics['mean']['P-AUROC']:.1f}"
    )
    report = {
        "command": "python -m rlr demo (empty RLR_CACHE_DIR, empty working folder)",
        "seconds": {"total": seconds, "training_epochs": training, "everything_else": seconds - training},
        "target_seconds": TARGET_SECONDS,
        "epochs": len(history),
        "mean": metrics["mean"],
        "per_class": metrics["per_class"],
        "notes": "total includes process start-up, imports, demo data generation, feature extraction, "
        "training, testing and the report; everything_else = total - the logged epoch seconds.",
        **machine_info(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
