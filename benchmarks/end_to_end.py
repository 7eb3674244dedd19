"""Wall time of `rlr train` + `rlr test` on realmini, split into feature extraction, training, testing.

    python benchmarks/end_to_end.py [--data ../shared/data/realmini] [--config configs/rlr_realmini_cpu.yaml]
        [--passes cold warm] [--limit N] [--quick] [--keep-run DIR] [--out PATH] [key=value overrides]

The config is the realmini one, `configs/rlr_realmini_cpu.yaml` (what benchmarks/realmini.py trains),
not the demo preset `rlr.presets.cpu_config`. Each pass calls the two functions the CLI calls,
`rlr.engine.train.train` (`rlr train`) and `rlr.api.evaluate` (`rlr test`), in this
process, on a fresh run folder. The first pass starts from an empty feature cache in a temporary
folder (cold), the second reuses that cache (warm). Feature extraction is timed where it happens,
inside those calls (around `features_for`), so the totals are the commands' own work and the split
adds nothing to it; training is the rest of `train` (model set-up, epochs, checkpoints), testing the
rest of `evaluate` (scoring, metrics, report). Seconds per epoch come from the run's own
train_log.jsonl, so a short run (`train.epochs=2`) can be extrapolated: the JSON gives the projected
total for the config file's epoch count, labelled as a projection. Process start-up and imports
(about two seconds per command) are not included. `--limit N` keeps the first N training images per
class and the first N test images per defect type (a linked subset, for smoke tests); `--quick` is
`--limit 4 train.epochs=1`. `--keep-run DIR` copies the first pass's run folder to DIR (for
`benchmarks/peers.py --rlr-run DIR`). Writes benchmarks/results/end_to_end.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from machine_info import machine_info

import rlr.api
import rlr.engine.evaluate
import rlr.engine.train
from rlr.atomic import write_text
from rlr.config import RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "rlr_realmini_cpu.yaml"
DATA = REPO.parent / "shared" / "data" / "realmini"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "end_to_end.json"
QUICK_LIMIT = 4


def link_subset(root: Path, dest: Path, limit: int) -> Path:
    """A symlinked copy of an MVTec-layout dataset with at most `limit` images per folder.

    Training keeps the first `limit` good images per class, testing the first `limit` per
    defect type (and of `good`), each defect image with its mask. Links, not copies: the
    data's licences forbid redistribution, and nothing here leaves the temporary folder.
    """
    for class_dir in sorted(p for p in root.iterdir() if (p / "train").is_dir()):
        for type_dir in sorted(p for p in (class_dir / "test").iterdir() if p.is_dir()):
            for image in sorted(type_dir.iterdir())[:limit]:
                _link(image, dest / class_dir.name / "test" / type_dir.name / image.name)
                for mask in (class_dir / "ground_truth" / type_dir.name).glob(f"{image.stem}*"):
                    _link(mask, dest / class_dir.name / "ground_truth" / type_dir.name / mask.name)
        for image in sorted((class_dir / "train" / "good").iterdir())[:limit]:
            _link(image, dest / class_dir.name / "train" / "good" / image.name)
    return dest


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve())


@contextmanager
def timing_feature_extraction() -> Iterator[dict[str, float]]:
    """Seconds spent in `features_for` by `train` ("train") and by `evaluate` ("test").

    Wraps the name each engine module calls, so the CLI's code path runs unchanged and is
    only observed; fails loudly if the library stops calling it (the split would be wrong).
    """
    seconds = {"train": 0.0, "test": 0.0}
    calls = {"train": 0, "test": 0}
    modules = {"train": rlr.engine.train, "test": rlr.engine.evaluate}
    originals = {phase: module.features_for for phase, module in modules.items()}

    def timed(phase: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[phase] += time.perf_counter() - started
                calls[phase] += 1

        return wrapper

    for phase, module in modules.items():
        module.features_for = timed(phase, originals[phase])
    try:
        yield seconds
    finally:
        for phase, module in modules.items():
            module.features_for = originals[phase]
    missing = [phase for phase, count in calls.items() if count == 0]
    if missing:
        raise RuntimeError(f"features_for was never called by {missing}: the engine changed, fix this benchmark")


def count_files(folder: Path) -> int:
    """Files under `folder`: the cache entries a pass wrote tell how many images went through the backbone."""
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def timed_run(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """`rlr train` then `rlr test` on `run_dir`, with the wall time of each phase and the metrics."""
    cache_before = count_files(Path(config.train.cache_dir))
    with timing_feature_extraction() as features:
        started = time.perf_counter()
        rlr.engine.train.train(config, run_dir, overwrite=True)
        trained = time.perf_counter()
        rlr.api.evaluate(run_dir)
        tested = time.perf_counter()
    history = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    epoch_seconds = [record["seconds"] for record in history]
    train_total, test_total = trained - started, tested - trained
    return {
        "seconds": {
            "feature_extraction": features["train"] + features["test"],
            "feature_extraction_train": features["train"],
            "feature_extraction_test": features["test"],
            "training": train_total - features["train"],
            "testing": test_total - features["test"],
            "rlr_train": train_total,
            "rlr_test": test_total,
            "total": train_total + test_total,
        },
        "epochs": len(history),
        "epoch_seconds": epoch_seconds,
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds),
        "seconds_per_epoch_after_first": steady_epoch_seconds(epoch_seconds),
        "steps_per_epoch": history[0]["steps"],
        "cache_entries_written": count_files(Path(config.train.cache_dir)) - cache_before,
        "per_class": metrics["per_class"],
        "mean": metrics["mean"],
    }


def steady_epoch_seconds(epoch_seconds: list[float]) -> float:
    """Mean seconds of the epochs after the first (which also pays torch's warm-up), if there are any."""
    later = epoch_seconds[1:] or epoch_seconds
    return sum(later) / len(later)


def projected_total(result: dict[str, Any], epochs: int) -> float:
    """The pass's total with `epochs` epochs, the extra ones at the steady seconds per epoch (a projection)."""
    return result["seconds"]["total"] + (epochs - result["epochs"]) * result["seconds_per_epoch_after_first"]


def quick_args(args: argparse.Namespace) -> None:
    """`--quick`: a few images per folder and one epoch, unless given explicitly."""
    if args.quick:
        args.limit = args.limit or QUICK_LIMIT
        if not any(item.startswith("train.epochs=") for item in args.overrides):
            args.overrides.append("train.epochs=1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument(
        "--passes",
        nargs="+",
        choices=("cold", "warm"),
        default=["cold", "warm"],
        help="cold: empty feature cache; warm: the cache the cold pass filled (default both)",
    )
    parser.add_argument("--limit", type=int, help="at most N images per train/test folder (smoke tests)")
    parser.add_argument("--quick", action="store_true", help=f"--limit {QUICK_LIMIT} train.epochs=1")
    parser.add_argument("--keep-run", type=Path, help="copy the first pass's run folder here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. train.epochs=2)")
    args = parser.parse_args(argv)
    quick_args(args)
    if not args.data.is_dir():
        print(f"realmini data not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    file_epochs = load_config(args.config).train.epochs

    with tempfile.TemporaryDirectory(prefix="rlr-e2e-") as tmp:
        scratch = Path(tmp)
        data = link_subset(args.data, scratch / "data", args.limit) if args.limit else args.data
        cache = scratch / "cache"
        config = load_config(args.config, [f"data.root={data}", *args.overrides, f"train.cache_dir={cache}"])
        if "warm" in args.passes and "cold" not in args.passes:
            timed_run(config, scratch / "fill")  # fills the cache; untimed
        passes = {name: timed_run(config, scratch / name) for name in ("cold", "warm") if name in args.passes}
        if args.keep_run:
            shutil.copytree(scratch / next(iter(passes)), args.keep_run, dirs_exist_ok=True)

    print(
        f"{args.config.name}, {config.train.epochs} epochs, {config.data.image_size} px, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
        + (f", at most {args.limit} images per folder" if args.limit else "")
    )
    columns = ("features", "training", "testing", "total", "s/epoch", "computed")
    print(f"{'pass':<6}" + "".join(f"{c:>10}" for c in columns))
    for name, r in passes.items():
        s = r["seconds"]
        values = (s["feature_extraction"], s["training"], s["testing"], s["total"], r["seconds_per_epoch"])
        print(f"{name:<6}" + "".join(f"{v:>10.1f}" for v in values) + f"{r['cache_entries_written']:>10}")
    print(
        "seconds; features = train + test feature extraction (inside rlr train / rlr test); "
        "computed = images that went through the backbone"
    )
    for name, r in passes.items():
        mean = r["mean"]
        print(f"{name}: mean I-AUROC {100 * mean['I-AUROC']:.1f}, P-AUROC {100 * mean['P-AUROC']:.1f}")
    if config.train.epochs != file_epochs:
        for name, r in passes.items():
            print(
                f"{name}: projected total at the config's {file_epochs} epochs: "
                f"{projected_total(r, file_epochs) / 60:.1f} min (measured {r['epochs']} epochs; "
                f"{r['seconds_per_epoch_after_first']:.1f} s per epoch after the first)"
            )

    report = {
        "command": " ".join(["python", "benchmarks/end_to_end.py", *(argv if argv is not None else sys.argv[1:])]),
        "config_file": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "config": {**config.to_dict(), "data": {**config.to_dict()["data"], "root": str(args.data)}},
        "limit_images_per_folder": args.limit,
        "passes": passes,
        "config_file_epochs": file_epochs,
        "projected_total_seconds_at_config_file_epochs": {
            name: projected_total(r, file_epochs) for name, r in passes.items()
        },
        "notes": "cold: empty temporary feature cache; warm: the same cache, filled. Feature extraction is "
        "timed inside rlr train / rlr test; process start-up is not included. Projection = measured total + "
        "(config file epochs - measured epochs) x mean seconds of the measured epochs after the first "
        "(of the only one when a single epoch ran).",
        **machine_info(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
