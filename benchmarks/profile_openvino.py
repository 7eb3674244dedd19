"""Where the scorer's time goes on OpenVINO (per-layer performance counters) and on PyTorch, by part.

    python benchmarks/profile_openvino.py [--run RUN] [--export DIR] [--batch 16] [--threads 1]
                                          [--repeats 10] [--out PATH]

Without --run, the demo config is trained for one epoch as in predict_speed.py. The run is exported
to OpenVINO into --export (a folder that already holds a model.xml is profiled as it is, so an
older export can be set against a newer one) or a temporary folder. OpenVINO compiles it as the
runner does (its properties, the batch fixed) plus PERF_COUNT, scores `--batch` demo images
`--repeats` times after warm-up and sums each executed node's counter. Every node is put in one part of the scorer by where its
original layers sit in the converted graph: `/extractor/...` the backbone (with the input
normalisation feeding it), `/model/...` the reconstructors, and the scorer's own ops split into
the per-level distance (before the bilinear up-sampling), the up-sampling, the level average
(ancestor of both outputs), the Gaussian smoothing (the convolutions and their padding) and the
image score (what leads only to `score`); input, output and unattributed reorders are "other".
The PyTorch breakdown times the backbone and the reconstructors with forward hooks (the rest of
the scorer's forward is the scoring) and lists torch.profiler's top operators.

Meant to be run on one core while other work runs (`OMP_NUM_THREADS=1 taskset -c 1`): shares are
what it is for, absolute times on a shared core are not; the JSON says how many threads it used.
Also gives each part's counted FLOPs over this process's dense matmul rate: the time that part
could not go below. Writes benchmarks/results/profile_openvino.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import openvino
import torch
from machine_info import machine_info
from predict_speed import WARMUP, median_seconds, prepare_run
from torch.utils.flop_counter import FlopCounterMode
from train_step import CPU_ATTENTION_FLOPS, dense_matmul_gflops

import rlr
from rlr.atomic import write_text
from rlr.deploy.export import INFO_NAME
from rlr.deploy.model import Model
from rlr.deploy.openvino_export import XML_NAME, export_openvino
from rlr.deploy.openvino_runner import OpenVinoScorer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "profile_openvino.json"
BACKBONE, RECONSTRUCTION, OTHER = "backbone", "reconstruction", "other"
DISTANCE, UPSAMPLING, AVERAGE = "scoring: distance", "scoring: upsampling", "scoring: level average"
SMOOTHING, IMAGE_SCORE = "scoring: gaussian smoothing", "scoring: image score"
PARTS = (BACKBONE, RECONSTRUCTION, DISTANCE, UPSAMPLING, AVERAGE, SMOOTHING, IMAGE_SCORE, OTHER)
MODULE_PARTS = {"/extractor/": BACKBONE, "/model/": RECONSTRUCTION}  # torch.onnx names nodes by module
TOP_LAYERS = 15


def _related(starts: Iterable, step) -> set[str]:
    """Names of `starts` and of every node reached from them by `step` (a node -> its neighbours)."""
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node.get_friendly_name() not in seen:
            seen.add(node.get_friendly_name())
            stack.extend(step(node))
    return seen


def part_of_each_op(model: openvino.Model) -> dict[str, str]:
    """Friendly name -> part (see the module docstring) for every op of the converted graph."""
    ops = model.get_ordered_ops()
    consumers = collections.defaultdict(list)
    for op in ops:
        for value in op.input_values():
            consumers[value.get_node().get_friendly_name()].append(op)

    def parents(node):
        return [value.get_node() for value in node.input_values()]

    def children(node):
        return consumers[node.get_friendly_name()]

    parts = {}
    for op in ops:
        name = op.get_friendly_name()
        parts[name] = next((part for prefix, part in MODULE_PARTS.items() if name.startswith(prefix)), None)
    own = [op for op in ops if parts[op.get_friendly_name()] is None]
    backbone_input = _related([op for op in ops if parts[op.get_friendly_name()] == BACKBONE], parents)
    resizes = [op for op in own if op.get_type_name() == "Interpolate"]
    after_resize = _related(resizes, children)
    result = {o.get_any_name(): o.get_node().input_value(0).get_node() for o in model.outputs}
    to_map, to_score = _related([result["map"]], parents), _related([result["score"]], parents)
    convolutions = [op for op in own if op.get_type_name() == "Convolution" and op.get_friendly_name() in after_resize]
    smoothing = _related(convolutions, parents) & after_resize - (to_map & to_score)
    for op in own:
        name = op.get_friendly_name()
        if op.get_type_name() in ("Parameter", "Result"):
            parts[name] = OTHER
        elif name in backbone_input:
            parts[name] = BACKBONE  # the input normalisation, folded out of /extractor/ by the converter
        elif op.get_type_name() == "Interpolate":
            parts[name] = UPSAMPLING
        elif name not in after_resize:
            parts[name] = DISTANCE
        elif name in smoothing:
            parts[name] = SMOOTHING
        elif name in to_map:
            parts[name] = AVERAGE
        else:
            parts[name] = IMAGE_SCORE
    return parts


def executed_part(name: str, originals: list[str], parts: dict[str, str]) -> str:
    """The part of an executed node: the commonest part of the layers fused into it, else of the layer
    its name ends with (OpenVINO names an inserted reorder `<source>_<layouts>_<consumer>`)."""
    known = [parts[o] for o in originals if o in parts]
    if known:
        return collections.Counter(known).most_common(1)[0][0]
    consumer = max((o for o in parts if name.endswith(o)), key=len, default=None)
    return parts[consumer] if consumer else OTHER


def openvino_profile(xml_path: Path, images: np.ndarray, threads: int, repeats: int) -> dict:
    """Per-node counters summed over `repeats` inferences of `images`, grouped into parts, plus the top layers.

    The model is compiled as the runner compiles it (its properties, the batch fixed), plus PERF_COUNT.
    """
    scorer = OpenVinoScorer(xml_path, threads=threads)
    properties = {k: str(v) for k, v in scorer.properties.items()}
    scorer.properties["PERF_COUNT"] = True
    parts = part_of_each_op(scorer.network)
    compiled = scorer.compiled_for(len(images))
    originals = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        fused = str(info["originalLayersNames"].astype(str)) if "originalLayersNames" in info else ""
        originals[op.get_friendly_name()] = [n for n in fused.split(",") if n]
    request = compiled.create_infer_request()
    for _ in range(WARMUP):
        request.infer({0: images})
    seconds: collections.Counter = collections.Counter()
    kinds = {}
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        request.infer({0: images})
        walls.append(time.perf_counter() - started)
        for node in request.profiling_info:
            seconds[node.node_name] += node.real_time.total_seconds()
            kinds[node.node_name] = (node.node_type, node.exec_type)
    per_image_ms = {name: 1000 * s / repeats / len(images) for name, s in seconds.items()}
    counted = sum(per_image_ms.values())
    grouped = dict.fromkeys(PARTS, 0.0)
    node_part = {name: executed_part(name, originals.get(name, []), parts) for name in per_image_ms}
    for name, ms in per_image_ms.items():
        grouped[node_part[name]] += ms
    top = sorted(per_image_ms, key=per_image_ms.get, reverse=True)[:TOP_LAYERS]
    return {
        "properties": properties,
        "wall_ms_per_image_median": 1000 * statistics.median(walls) / len(images),
        "counted_ms_per_image": counted,
        "parts": {p: {"ms_per_image": ms, "share": ms / counted} for p, ms in grouped.items()},
        "top_layers": [
            {
                "name": name,
                "type": kinds[name][0],
                "kernel": kinds[name][1],
                "part": node_part[name],
                "ms_per_image": per_image_ms[name],
                "share": per_image_ms[name] / counted,
            }
            for name in top
        ],
    }


def torch_profile(model: Model, images: torch.Tensor, repeats: int) -> dict:
    """PyTorch eager: backbone and reconstructors timed by forward hooks, the rest of the forward is scoring."""
    scorer = model.scorer
    spans: dict[str, list[float]] = collections.defaultdict(list)
    started: dict[str, float] = {}
    handles = []
    for part, module in ((BACKBONE, scorer.extractor), (RECONSTRUCTION, scorer.model), ("total", scorer)):
        handles.append(module.register_forward_pre_hook(lambda *_, p=part: started.__setitem__(p, time.perf_counter())))
        handles.append(
            module.register_forward_hook(lambda *_, p=part: spans[p].append(time.perf_counter() - started[p]))
        )
    try:
        with torch.inference_mode():
            median_seconds(lambda: scorer(images), repeats)
    finally:
        for handle in handles:
            handle.remove()
    timed = {part: 1000 * statistics.median(spans[part][WARMUP:]) / len(images) for part in spans}
    timed["scoring"] = timed["total"] - timed[BACKBONE] - timed[RECONSTRUCTION]
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profiler, torch.inference_mode():
        scorer(images)
    averages = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in averages)
    return {
        "ms_per_image": timed,
        "shares": {part: timed[part] / timed["total"] for part in (BACKBONE, RECONSTRUCTION, "scoring")},
        "top_operators (one profiled batch, self time)": [
            {"name": e.key, "calls": e.count, "share": e.self_cpu_time_total / total_self} for e in averages[:10]
        ],
    }


def flops_by_part(model: Model, image: torch.Tensor) -> dict[str, int]:
    """Counted FLOPs of one image per part (convolutions, matmuls, attention; as predict_speed.py counts)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter, torch.inference_mode():
        model.scorer(image[None])
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    backbone = sum(counts.get("Scorer.extractor", {}).values())
    reconstruction = sum(counts.get("Scorer.model", {}).values())
    return {BACKBONE: backbone, RECONSTRUCTION: reconstruction, "scoring": total - backbone - reconstruction}


def exported_model(model: Model, folder: Path) -> tuple[Path, bool]:
    """The OpenVINO IR in `folder`: the one already there (reused: True), else a new export of `model`."""
    if (folder / XML_NAME).exists():
        return folder / XML_NAME, True
    return export_openvino(model, folder, verify=False), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train the demo config for one epoch)")
    parser.add_argument("--export", type=Path, help="OpenVINO export folder: profiled as it is if it holds model.xml")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="OpenVINO and torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.export and (args.export / XML_NAME).exists() and not (args.export / INFO_NAME).exists():
        parser.error(f"--export {args.export}: {XML_NAME} has no {INFO_NAME} beside it (export it with rlr export)")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="rlr-profile-") as tmp:
        run_dir = args.run or prepare_run(Path(tmp))
        model = rlr.load(run_dir, "cpu")
        xml_path, reused = exported_model(model, args.export or Path(tmp) / "openvino")
        paths = sorted(Path(model.config.data.root).glob("*/test/*/*.png"))[: args.batch]
        images = torch.stack([model.prepare(p).pixels for p in paths])
        engine = openvino_profile(xml_path, images.numpy(), args.threads, args.repeats)
        eager = torch_profile(model, images, args.repeats)
        flops = flops_by_part(model, images[0])
    peak = dense_matmul_gflops(torch.device("cpu"))
    floors = {part: count / peak / 1e6 for part, count in flops.items()}

    print(f"OpenVINO {openvino.get_version()}, {args.threads} thread(s), batch {len(images)}, {args.repeats} repeats")
    print(
        f"wall {engine['wall_ms_per_image_median']:.1f} ms/image (median), counters {engine['counted_ms_per_image']:.1f}"
    )
    for part, row in engine["parts"].items():
        print(f"  {part:<28} {row['ms_per_image']:7.2f} ms/image {row['share']:6.1%}")
    print("top layers:")
    for row in engine["top_layers"]:
        print(f"  {row['ms_per_image']:7.2f} ms {row['share']:6.1%} {row['type']:<18} {row['part']:<16} {row['name']}")
    print("PyTorch eager: " + ", ".join(f"{p} {s:.0%}" for p, s in eager["shares"].items()))
    print(f"dense matmul {peak:.1f} GFLOP/s; floors: " + ", ".join(f"{p} {ms:.1f} ms" for p, ms in floors.items()))

    report = {
        "config": "rlr.presets.cpu_config (demo)",
        "image_size": model.image_size,
        "batch": len(images),
        "threads": args.threads,
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "repeats": args.repeats,
        "warmup": WARMUP,
        "note": "shares are the result; absolute times come from a core other jobs may share",
        "export": "reused" if reused else "exported by this run",
        "openvino": openvino.get_version(),
        "openvino_profile": engine,
        "pytorch_profile": eager,
        "gflop_per_image": {part: count / 1e9 for part, count in flops.items()},
        "dense_matmul_gflops": peak,
        "floor_ms_per_image_at_matmul_rate": floors,
        "load_average": os.getloadavg(),
        **machine_info(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
