"""Test a trained run: per-class anomaly maps, image scores and metrics, returned as results.

Nothing here writes files: `rlr.api.evaluate` hands the results to the report package.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from rlr.config import EvalConfig, RunConfig, from_dict
from rlr.data.transforms import image_size as stored_image_size
from rlr.data.transforms import load_mask
from rlr.data.types import ImageRecord
from rlr.engine.build import (
    build_cache,
    build_extractor,
    build_model,
    build_split,
    features_for,
    resolve_device,
    scoring_rule,
)
from rlr.engine.checkpoint import ensure_same_config, load_checkpoint, load_model_state
from rlr.engine.runs import CHECKPOINT_NAME
from rlr.errors import CheckpointError, RlrError, one_line
from rlr.metrics import compute_metrics
from rlr.results import ClassResult
from rlr.scoring import ScoringRule


def load_run(run_dir: Path) -> tuple[RunConfig, nn.Module, dict]:
    """The run's config and its last-epoch model (never a checkpoint picked on test data)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    state = load_checkpoint(path)
    try:
        config = from_dict(ensure_same_config(path, state.get("config")))
        spec = state["model_spec"]
        model = build_model(config, spec["channels"], [tuple(s) for s in spec["map_sizes"]])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: does not match its config ({one_line(exc)})") from None
    load_model_state(model, state.get("model"), path)
    model.eval()
    return config, model, state


@torch.no_grad()
def predict_maps(
    model: nn.Module,
    features: Sequence[torch.Tensor],
    rule: ScoringRule,
    image_size: int,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Unsmoothed anomaly maps (N, image_size, image_size) for cached features, batch by batch."""
    maps = []
    for start in range(0, features[0].shape[0], batch_size):
        batch = [f[start : start + batch_size].to(device, torch.float32) for f in features]
        maps.append(rule.raw_maps(batch, model(batch), image_size).cpu())
    return torch.cat(maps)


def load_masks(records: Sequence[ImageRecord], image_size: int, resize: str = "stretch") -> np.ndarray:
    """Ground truth at the evaluation size, placed as the images are (`resize`); a mask that does not fit its image is an error."""
    masks = np.zeros((len(records), image_size, image_size), dtype=bool)
    for i, record in enumerate(records):
        if record.mask_path is not None:
            expected = stored_image_size(record.image_path)
            masks[i] = load_mask(record.mask_path, image_size, expected_size=expected, mode=resize)[0].numpy() > 0
    return masks


def test_results(
    run_dir: Path,
    device_name: str | None = None,
    classes: Sequence[str] | None = None,
    eval_config: EvalConfig | None = None,
) -> tuple[RunConfig, dict[str, ClassResult]]:
    """Score every test image of the run's classes (or of `classes`) with its last checkpoint; writes nothing.

    `eval_config` replaces the run's eval section, to score the same weights another way.
    """
    config, model, _ = load_run(Path(run_dir))
    if eval_config is not None:
        config = replace(config, eval=eval_config)
    device = resolve_device(device_name or config.train.device)
    model.to(device)
    split = build_split(config)
    unknown = sorted(set(classes or ()) - set(split.test))
    if unknown:
        raise RlrError(f"{run_dir}: no class {', '.join(unknown)} in this run (it has {', '.join(split.test)})")
    extractor = build_extractor(config)
    cache = build_cache(config, extractor)
    rule = scoring_rule(config)
    size = config.data.image_size

    results: dict[str, ClassResult] = {}
    for class_name, records in split.test.items():
        if classes and class_name not in classes:
            continue
        features = features_for(config, records, extractor, cache, device, f"test {class_name}")
        raw = predict_maps(model, features, rule, size, config.eval.batch_size, device)
        scores = rule.image_scores(raw).numpy()
        maps = rule.pixel_maps(raw).numpy().astype(np.float32)
        labels = np.array([r.label for r in records])
        masks = load_masks(records, size, config.data.resize)
        metrics = compute_metrics(scores, labels, maps, masks)
        results[class_name] = ClassResult(list(records), scores, maps, masks, metrics)
    return config, results


def protocol(config: RunConfig) -> dict[str, object]:
    """The evaluation settings a reader needs to compare numbers, written beside every table."""
    return {
        "model": config.model.name,
        "image_size": config.data.image_size,
        "resize": config.data.resize,
        "mask_resize": "nearest neighbour, binarised at > 0",
        **scoring_rule(config).describe(),
        "aupro_fpr_limit": 0.3,
        "checkpoint": "last epoch",
        **_held_out(config),
    }


def _held_out(config: RunConfig) -> dict[str, object]:
    """How test normals were carved out of the good images, where they were (data.normal_test_ratio)."""
    data = config.data
    if data.normal_test_ratio <= 0:
        return {}
    return {"normal_test_ratio": data.normal_test_ratio, "split_seed": data.split_seed}
