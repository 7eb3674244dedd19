"""Train one unified reconstructor on the cached features of every class's normal images."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rlr.config import RunConfig, save_config
from rlr.engine.build import (
    build_cache,
    build_extractor,
    build_model,
    build_split,
    features_for,
    resolve_device,
)
from rlr.engine.checkpoint import save_checkpoint
from rlr.errors import RlrError
from rlr.models.rlr import feature_jitter, reconstruction_loss

CHECKPOINT_NAME = "last.pt"


def run_dir_for(config: RunConfig) -> Path:
    return Path(config.output_dir) / config.name


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to train over an earlier run's results unless told to."""
    if (run_dir / CHECKPOINT_NAME).exists() and not overwrite:
        raise RlrError(f"{run_dir}: already holds a trained run; choose another name/output_dir or pass --overwrite")
    run_dir.mkdir(parents=True, exist_ok=True)


def train(config: RunConfig, run_dir: Path | None = None, overwrite: bool = False) -> Path:
    """Train, writing `last.pt` atomically after every epoch; returns the run directory."""
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(config)
    split = build_split(config)
    prepare_run_dir(run_dir, overwrite)
    save_config(config, run_dir / "config.yaml")

    device = resolve_device(config.train.device)
    extractor = build_extractor(config)
    cache = build_cache(config, extractor)
    features = features_for(config, split.train, extractor, cache, device, "train features")
    channels = [f.shape[1] for f in features]
    map_sizes = [tuple(f.shape[-2:]) for f in features]

    torch.manual_seed(config.train.seed)
    model = build_model(config, channels, map_sizes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    generator = torch.Generator().manual_seed(config.train.seed)

    count = features[0].shape[0]
    batch_size = config.train.batch_size
    steps_per_epoch = math.ceil(count / batch_size)
    log_path = run_dir / "train_log.jsonl"
    log_path.unlink(missing_ok=True)
    model.train()
    with tqdm(total=config.train.epochs * steps_per_epoch, desc="train", unit="step") as bar:
        for epoch in range(1, config.train.epochs + 1):
            started = time.perf_counter()
            order = torch.randperm(count, generator=generator)
            total = 0.0
            for start in range(0, count, batch_size):
                index = order[start : start + batch_size]
                clean = [f[index].to(device, torch.float32) for f in features]
                noisy = [feature_jitter(f, config.train.jitter_scale) for f in clean]
                reconstructions = model(noisy)
                loss = sum(reconstruction_loss(r, f) for r, f in zip(reconstructions, clean))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
                bar.set_postfix(epoch=f"{epoch}/{config.train.epochs}", loss=f"{loss.item():.4f}")
                bar.update(1)
            record = {"epoch": epoch, "loss": total / count, "seconds": time.perf_counter() - started}
            save_checkpoint(
                run_dir / CHECKPOINT_NAME,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "config": config.to_dict(),
                    "model_spec": {"channels": channels, "map_sizes": [list(s) for s in map_sizes]},
                },
            )
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
    return run_dir
