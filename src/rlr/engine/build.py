"""Build the pieces a run needs (data split, extractor, cache, model, device) from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from rlr.config import RunConfig
from rlr.data.folder import discover_folder, scan_class_folders
from rlr.data.holdout import hold_out_normals
from rlr.data.mvtec import discover_mvtec
from rlr.data.split import DatasetSplit
from rlr.data.types import ImageRecord
from rlr.data.visa import discover_visa
from rlr.errors import ConfigError
from rlr.features.backbone import FeatureExtractor
from rlr.features.cache import FeatureCache, default_cache_dir, extractor_key
from rlr.features.extract import extract_features
from rlr.models import create_model, model_spec
from rlr.models.base import Reconstructor
from rlr.scoring import ScoringRule


def resolve_device(name: str) -> torch.device:
    """'auto' picks the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available")
    return device


def build_split(config: RunConfig) -> DatasetSplit:
    """The unified training set and the per-class test sets the config names, with
    data.normal_test_ratio of the good images held out where a class has no test normals."""
    data = config.data
    return hold_out_normals(_discover(config), data.normal_test_ratio, data.split_seed)


def _discover(config: RunConfig) -> DatasetSplit:
    data = config.data
    if data.format == "folder" and data.train_dir:
        return discover_folder(
            data.train_dir,
            data.test_normal_dir or None,
            data.test_abnormal_dir or None,
            data.mask_dir or None,
            class_name=config.name,
        )
    if not data.root:
        if data.format == "folder":
            raise ConfigError("data.format=folder needs data.root (class folders) or data.train_dir")
        raise ConfigError("data.root is empty: point it at a dataset (or run `rlr demo`)")
    if data.format == "folder":
        return scan_class_folders(data.root, data.classes)
    if data.format == "visa":
        return discover_visa(data.root, data.classes)
    return discover_mvtec(data.root, data.classes)


def build_extractor(config: RunConfig) -> FeatureExtractor:
    b = config.backbone
    return FeatureExtractor(b.name, b.out_indices, b.weights_file, b.allow_download, b.smoothing, b.merge)


def build_cache(config: RunConfig, extractor: FeatureExtractor) -> FeatureCache:
    root = Path(config.train.cache_dir) if config.train.cache_dir else default_cache_dir()
    key = extractor_key(
        extractor.backbone_name,
        extractor.weights.identity,
        config.data.image_size,
        extractor.out_indices,
        extractor.smoothing,
        extractor.merge,
        config.data.resize,
    )
    return FeatureCache(root, key)


def features_for(
    config: RunConfig,
    records: Sequence[ImageRecord],
    extractor: FeatureExtractor,
    cache: FeatureCache,
    device: torch.device,
    desc: str,
) -> list[torch.Tensor]:
    features, _ = extract_features(
        records,
        extractor,
        cache,
        config.data.image_size,
        batch_size=config.train.feature_batch_size,
        device=device,
        num_workers=config.train.num_workers,
        desc=desc,
        resize=config.data.resize,
    )
    return features


def scoring_rule(config: RunConfig) -> ScoringRule:
    """The eval section's scoring, with 'auto' entries resolved to the model's own recipe."""
    spec = model_spec(config.model.name)
    e = config.eval
    return ScoringRule(
        map_score=spec.map_score if e.map_score == "auto" else e.map_score,
        image_score=spec.image_score if e.image_score == "auto" else e.image_score,
        image_score_sigma=e.image_score_sigma,
        image_score_top_percent=e.image_score_top_percent,
        image_score_pool=e.image_score_pool,
        pixel_map_sigma=e.pixel_map_sigma,
    )


def build_model(config: RunConfig, channels: Sequence[int], map_sizes: Sequence[tuple[int, int]]) -> Reconstructor:
    """The registered model the config's model section names, for these backbone maps."""
    try:
        return create_model(config.model, channels, map_sizes)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
