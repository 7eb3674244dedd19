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
    print(f"report: {run_dir}/report.html; tables: {run_dir}/metrics.md (also .json, .csv)")


def cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.api import config_for, train
    from rlr.config import parse_value
    from rlr.engine.distributed import is_main_process
    from rlr.engine.runs import resume_state, run_dir_for
    from rlr.engine.train import train as continue_run
    from rlr.paths import check_output_dir

    say = print if is_main_process() else lambda *_: None  # under torchrun, rank 0 speaks for all
    overrides = _overrides(extra)
    if args.resume is None:
        typed = {key: parse_value(key, raw) for key, raw in (item.split("=", 1) for item in overrides)}
        config, chosen = config_for(args.config, overrides=typed)  # what rlr.train(config, overrides=...) does
        if chosen is not None:
            say(chosen)
        check_output_dir(args.run_dir or run_dir_for(config), "--run-dir")
        run_dir = train(config, run_dir=args.run_dir, overwrite=args.overwrite).path
    else:
        epochs = [item for item in overrides if item.startswith("train.epochs=")]
        if args.config or args.run_dir or args.overwrite or len(epochs) != len(overrides):
            raise RlrError("--resume continues a run with its own config; only --train.epochs N may be given")
        more = parse_value("train.epochs", epochs[-1].split("=", 1)[1]) if epochs else None  # checked by resume_state
        config, state = resume_state(args.resume, more)
        if state["epoch"] >= config.train.epochs:
            say(f"{args.resume}: already trained for {state['epoch']} epochs; nothing to do")
            return 0
        say(f"resuming {args.resume} after epoch {state['epoch']}")
        run_dir = continue_run(config, args.resume, resume=state)
    say(f"trained: {run_dir}/last.pt")
    return 0


def cmd_test(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.api import test

    if extra:
        raise RlrError(f"rlr test takes no overrides, got {' '.join(extra)}")
    if args.run is not None and args.run_option is not None and args.run != args.run_option:
        raise RlrError(f"rlr test: two runs given ({args.run} and --run {args.run_option})")
    run = args.run or args.run_option
    if run is None:
        raise RlrError("rlr test: which run? (rlr test RUN)")
    test(Path(run), args.device)
    _print_table(Path(run))
    return 0


def cmd_demo(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.api import test, train
    from rlr.data.demo import ensure_demo
    from rlr.presets import cpu_config

    started = time.perf_counter()
    root = ensure_demo()
    print(f"demo data: {root}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    config = cpu_config((f"data.root={root}", f"name=demo-{stamp}", *_overrides(extra)))
    run = train(config)
    test(run)
    _print_table(run.path)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def cmd_data_check(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.data.check import check_dataset, format_check_report

    if extra:
        raise RlrError(f"rlr data check takes no options, got {' '.join(extra)}")
    report = check_dataset(Path(args.root))
    print(format_check_report(report), end="")
    return 1 if report.problems else 0


def cmd_config_show(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.config import describe, load_config
    from rlr.presets import device_recipe

    overrides = _overrides(extra)
    if args.config is None:
        config, chosen = device_recipe(overrides)
        print(f"# {chosen}")
    else:
        config = load_config(args.config, overrides)
    print(describe(config), end="")
    return 0


def cmd_ablate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.ablate import run_recipe, run_study

    overrides = [f"data.root={args.data}", f"data.format={args.format}", *_overrides(extra)]
    out = args.out or Path("runs") / "ablate"
    if args.study == "recipe":
        slugs = [slug.strip() for slug in args.variants.split(",")] if args.variants is not None else None
        run_recipe(out, args.config, overrides, args.seeds, slugs, args.overwrite)
    elif args.seeds is not None or args.variants is not None:
        raise RlrError("--seeds and --variants belong to --study recipe")
    else:
        methods = {slug: path for slug, path in (("rlr", args.rlr_config), ("uniad", args.uniad_config)) if path}
        run_study(args.study, out, args.config, overrides, methods, args.overwrite)
    print(Path(out, f"{args.study}.md").read_text(encoding="utf-8"), end="")
    print(f"tables: {out}/{args.study}.md and .json")
    return 0


def _no_extra(command: str, extra: Sequence[str]) -> None:
    if extra:
        raise RlrError(f"rlr {command}: unexpected arguments {' '.join(extra)}")


def cmd_figure(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.report.qualitative import write_qualitative

    _no_extra("figure", extra)
    picks = write_qualitative(args.runs, args.out, args.class_names, args.samples, args.images, args.device)
    for pick in picks:
        spread = "" if pick.disagreement is None else f" (disagreement {pick.disagreement:.2f})"
        print(f"{pick.class_name}: {pick.image_path}{spread}")
    print(f"figure: {args.out} ({len(picks)} rows x {2 + len(args.runs)} columns)")
    return 0


def cmd_predict(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.deploy.inputs import collect_inputs
    from rlr.deploy.model import Model
    from rlr.deploy.predict import predict_files
    from rlr.paths import check_output_dir

    _no_extra("predict", extra)
    _check_batch_size(args.batch_size)
    out_dir = args.out or Path(args.run) / "predictions"
    check_output_dir(out_dir, "--out")
    model = Model.load(args.run, args.device)
    if args.class_name is not None and args.class_name not in model.class_names:
        raise RlrError(f"unknown class '{args.class_name}' (this run knows: {', '.join(model.class_names) or 'none'})")
    files, problems = collect_inputs(args.paths)
    summary = predict_files(
        model,
        files,
        out_dir,
        args.class_name,
        overlays=not args.no_overlays,
        save_maps=args.save_maps,
        full_size_maps=args.full_size_maps,
        batch_size=args.batch_size,
        masks=args.masks,
    )
    problems += summary.problems
    decided = "no threshold: run `rlr calibrate` for decisions"
    if model.thresholds is not None:
        decided = f"{summary.anomalous} anomalous"
    print(f"scored {summary.scored} images ({decided}): {summary.csv_path}")
    for problem in problems:
        print(f"rlr: skipped: {problem}", file=sys.stderr)
    if problems:
        print(f"rlr: {len(problems)} input(s) skipped", file=sys.stderr)
    return 1 if problems else 0


def _check_batch_size(batch_size: int | None) -> None:
    """Refuse a non-positive --batch-size before any work (it once scored nothing and exited 0)."""
    if batch_size is not None and batch_size < 1:
        raise RlrError(f"--batch-size must be at least 1, got {batch_size}")


def cmd_calibrate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.deploy.calibrate import calibrate
    from rlr.deploy.model import Model
    from rlr.deploy.thresholds import THRESHOLDS_NAME

    _no_extra("calibrate", extra)
    _check_batch_size(args.batch_size)
    model = Model.load(args.run, args.device, use_thresholds=False)
    payload = calibrate(model, args.normal, args.quantile, args.fpr, args.batch_size, args.pixel_quantile)
    for name, entry in [("global", payload["global"]), *payload["per_class"].items()]:
        print(
            f"{name}: threshold {entry['threshold']:.6g}, pixel threshold {entry['pixel_threshold']:.6g} "
            f"from {entry['n_images']} normal images"
        )
    print(
        f"quantile {payload['quantile']:g} of normal scores (pixels: {payload['pixel_quantile']:g}) "
        f"-> {Path(args.run) / THRESHOLDS_NAME}"
    )
    return 0


def cmd_export(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from rlr.deploy.formats import export
    from rlr.deploy.model import Model
    from rlr.paths import check_output_dir

    _no_extra("export", extra)
    out_dir = args.out or Path(args.run) / args.format
    check_output_dir(out_dir, "--out")
    model = Model.load(args.run, "cpu")
    path = export(model, args.format, out_dir)
    runners = "rlr_onnx_runner.py" if args.format == "onnx" else "rlr_openvino_runner.py, rlr_onnx_runner.py"
    print(f"exported: {path} (+ model.json, {runners} beside it)")
    return 0


def cmd_serve(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import os

    from rlr.deploy.api_auth import TOKEN_ENV
    from rlr.deploy.serve import check_settings, serve

    _no_extra("serve", extra)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    settings = check_settings(
        args.host, args.port, token, args.max_upload_mb, args.max_megapixels, args.timeout, args.queue
    )
    serve(args.run, settings, args.device)
    return 0


def _add_inference_commands(sub: argparse._SubParsersAction) -> None:
    """predict, calibrate, export, serve: everything that uses a trained run on new images."""
    predict = sub.add_parser("predict", help="score images: CSV of scores/decisions, heatmap overlays, maps")
    predict.add_argument("run", help="run directory written by rlr train")
    predict.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    predict.add_argument("--out", type=Path, help="output folder (default: RUN/predictions)")
    predict.add_argument("--class", dest="class_name", help="use this class's threshold for every image")
    predict.add_argument("--save-maps", action="store_true", help="also write each anomaly map as .npy (float32)")
    predict.add_argument("--full-size-maps", action="store_true", help="maps at each image's size, not the model's")
    predict.add_argument("--no-overlays", action="store_true", help="skip the heatmap overlay PNGs")
    predict.add_argument(
        "--masks", action="store_true", help="also write binary defect masks (PNG, 255 = defect; needs rlr calibrate)"
    )
    predict.add_argument("--batch-size", type=int, help="images per forward pass (default: eval.batch_size)")
    predict.add_argument("--device", help="cpu, cuda, ... (default: the run's setting)")
    predict.set_defaults(handler=cmd_predict)

    calibrate = sub.add_parser("calibrate", help="set accept/reject thresholds from held-out normal images")
    calibrate.add_argument("run", help="run directory written by rlr train")
    calibrate.add_argument(
        "--normal",
        type=Path,
        help="normal images: <dir>/<class>/train/good, <dir>/<class>/..., or any folder; training images in it "
        "are left out (default: the run's held-out normals, data.normal_test_ratio)",
    )
    rule = calibrate.add_mutually_exclusive_group()
    rule.add_argument("--quantile", type=float, help="threshold = this quantile of normal scores (default 0.99)")
    rule.add_argument("--fpr", type=float, help="target false-positive rate on normal images (= 1 - quantile)")
    calibrate.add_argument(
        "--pixel-quantile", type=float, help="pixel threshold (--masks) = this quantile of normal map pixels (0.999)"
    )
    calibrate.add_argument("--batch-size", type=int, help="images per forward pass (default: eval.batch_size)")
    calibrate.add_argument("--device", help="cpu, cuda, ... (default: the run's setting)")
    calibrate.set_defaults(handler=cmd_calibrate)

    export = sub.add_parser("export", help="write the whole scorer as ONNX or OpenVINO plus a JSON of its settings")
    export.add_argument("run", help="run directory written by rlr train")
    export.add_argument("--format", default="onnx", choices=["onnx", "openvino"], help="export format (default onnx)")
    export.add_argument("--out", type=Path, help="output folder (default: RUN/<format>)")
    export.set_defaults(handler=cmd_export)

    serve = sub.add_parser("serve", help="HTTP API (POST /predict, /docs) and a page: drop an image, see its heatmap")
    serve.add_argument("run", help="run directory written by rlr train")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; any other needs a token)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    serve.add_argument(
        "--token",
        help="API token every request must carry (default: $RLR_SERVE_TOKEN; "
        "prefer the variable: arguments are visible to other users)",
    )
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted request body (default 20)")
    serve.add_argument("--max-megapixels", type=float, default=32.0, help="largest accepted image (default 32)")
    serve.add_argument(
        "--timeout", type=float, default=60.0, help="seconds a request may take, queue included (default 60)"
    )
    serve.add_argument(
        "--queue", type=int, default=64, help="requests waiting or scoring at most; more get 503 (default 64)"
    )
    serve.add_argument("--device", help="cpu, cuda, ... (default: the run's setting)")
    serve.set_defaults(handler=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlr", description="Unified multi-class anomaly detection (RLR).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train on a dataset; extra --section.key value pairs override the config",
        epilog="config keys: `rlr config show [--config F]` lists every key with its value and meaning; "
        "override any of them as --section.key value",
    )
    train.add_argument(
        "--config",
        help="YAML config, or a built-in preset: rlr_cpu, uniad_cpu "
        "(default: the small CPU recipe on a CPU, the paper's on a GPU)",
    )
    train.add_argument("--run-dir", type=Path, help="where to write the run (default: output_dir/name)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in that folder")
    train.add_argument("--resume", type=Path, metavar="RUN", help="continue RUN from its last complete epoch")
    train.set_defaults(handler=cmd_train)

    test = sub.add_parser("test", help="evaluate a trained run on its test sets")
    test.add_argument("run", nargs="?", help="run directory written by rlr train")
    test.add_argument("--run", dest="run_option", metavar="RUN", help="the same, as an option (older form)")
    test.add_argument("--device", help="override the run's device (cpu, cuda, ...)")
    test.set_defaults(handler=cmd_test)

    demo = sub.add_parser("demo", help="built-in data -> train the small CPU config -> test -> table")
    demo.set_defaults(handler=cmd_demo)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="summarise a dataset and list every problem found")
    check.add_argument(
        "root",
        help="dataset root (MVTec AD layout, the raw VisA release with split_csv/1cls.csv, "
        "or own data: <class>/good/ folders or one folder of good images)",
    )
    check.set_defaults(handler=cmd_data_check)
    _add_inference_commands(sub)

    config = sub.add_parser("config", help="config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show", help="print the resolved config, each key with its meaning; extra --section.key value pairs override it"
    )
    show.add_argument("--config", help="YAML config (default: what rlr train uses without one)")
    show.set_defaults(handler=cmd_config_show)

    figure = sub.add_parser("figure", help="rows of (image, ground truth, each run's map) for runs on the same data")
    figure.add_argument("--runs", nargs="+", required=True, type=Path, metavar="RUN", help="run folders, in order")
    figure.add_argument("--out", type=Path, default=Path("qualitative.png"), help="PNG (default qualitative.png)")
    figure.add_argument("--class", dest="class_names", nargs="+", metavar="NAME", help="only these classes")
    rows = figure.add_mutually_exclusive_group()
    rows.add_argument(
        "--samples",
        type=int,
        default=6,
        help="rows picked automatically: defective images the runs disagree on most (default 6)",
    )
    rows.add_argument("--images", nargs="+", type=Path, metavar="PATH", help="these test images instead, in order")
    figure.add_argument("--device", help="cpu, cuda, ... (default: each run's setting)")
    figure.set_defaults(handler=cmd_figure)

    ablate = sub.add_parser(
        "ablate",
        help="train a study's variants (methods, fusion, refs, recipe), write its table; extra --key value overrides",
    )
    ablate.add_argument("--study", required=True, choices=("methods", "fusion", "refs", "recipe"))
    ablate.add_argument("--data", type=Path, required=True, help="dataset root")
    ablate.add_argument("--format", default="mvtec", choices=("mvtec", "visa"), help="dataset layout (default mvtec)")
    ablate.add_argument("--out", type=Path, help="study folder (default runs/ablate)")
    ablate.add_argument("--config", type=Path, help="base config of fusion/refs/recipe (default: the small CPU preset)")
    ablate.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="recipe: train every variant once per seed (default: the config's seed)",
    )
    ablate.add_argument(
        "--variants",
        metavar="SLUG,...",
        help="recipe: only these, e.g. paper,top1 (default: all; the table shows all run so far)",
    )
    ablate.add_argument("--rlr-config", type=Path, help="methods: RLR's config (default: the rlr_cpu preset)")
    ablate.add_argument("--uniad-config", type=Path, help="methods: UniAD's config (default: the uniad_cpu preset)")
    ablate.add_argument("--overwrite", action="store_true", help="retrain variants whose folder holds another run")
    ablate.set_defaults(handler=cmd_ablate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names need not be valid UTF-8
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
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
