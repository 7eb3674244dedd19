"""The `rlr` command: parses arguments, loads the config, calls the library. Nothing else."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from rlr.errors import RlrError


def _overrides(extra: Sequence[str]) -> list[str]:
    """Turn `--data.root X` / `--data.root=X` into `data.root=X`."""
    items, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise RlrError(f"unexpected argument '{arg}' (overrides look like --section.key value)")
        if "=" in arg:
            items.append(arg[2:])
            i += 1
        elif i + 1 < len(extra):
            items.append(f"{arg[2:]}={extra[i + 1]}")
            i += 2
        else:
            raise RlrError(f"override {arg} has no value")
    return items


def _print_table(run_dir: Path) -> None:
    import json

    from rlr.report.tables import format_table

    payload = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    print(format_table(payload["per_class"], payload["mean"]), end="")
    print(f"results: {run_dir}/metrics.md (also .json, .csv)")


def cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.config import load_config
    from rlr.engine.train import train

    config = load_config(args.config, _overrides(extra))
    run_dir = train(config, args.run_dir, overwrite=args.overwrite)
    print(f"trained: {run_dir}/last.pt")
    return 0


def cmd_test(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.engine.evaluate import evaluate

    if extra:
        raise RlrError(f"rlr test takes no overrides, got {' '.join(extra)}")
    evaluate(Path(args.run), args.device)
    _print_table(Path(args.run))
    return 0


def cmd_demo(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.data.demo import ensure_demo
    from rlr.engine.evaluate import evaluate
    from rlr.engine.train import train
    from rlr.presets import cpu_config

    started = time.perf_counter()
    root = ensure_demo()
    print(f"demo data: {root}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config = cpu_config((f"data.root={root}", f"name=demo-{stamp}", *_overrides(extra)))
    run_dir = train(config)
    evaluate(run_dir)
    _print_table(run_dir)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def cmd_data_check(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.data.check import check_dataset, format_check_report

    if extra:
        raise RlrError(f"rlr data check takes no options, got {' '.join(extra)}")
    report = check_dataset(Path(args.root))
    print(format_check_report(report), end="")
    return 1 if report.problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlr", description="Unified multi-class anomaly detection (RLR).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on a dataset; extra --section.key value pairs override the config")
    train.add_argument("--config", help="YAML config (default: built-in defaults, the paper's settings)")
    train.add_argument("--run-dir", type=Path, help="where to write the run (default: output_dir/name)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in that folder")
    train.set_defaults(handler=cmd_train)

    test = sub.add_parser("test", help="evaluate a trained run on its test sets")
    test.add_argument("--run", required=True, help="run directory written by rlr train")
    test.add_argument("--device", help="override the run's device (cpu, cuda, ...)")
    test.set_defaults(handler=cmd_test)

    demo = sub.add_parser("demo", help="built-in data -> train the small CPU config -> test -> table")
    demo.set_defaults(handler=cmd_demo)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="summarise a dataset and list every problem found")
    check.add_argument("root", help="dataset root (MVTec AD layout)")
    check.set_defaults(handler=cmd_data_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return args.handler(args, extra)
    except RlrError as exc:
        print(f"rlr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlr: interrupted; files written so far are complete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
