"""Run configuration: typed dataclasses, YAML in and out, and `--section.key value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, get_type_hints

import yaml

from rlr.atomic import write_text
from rlr.errors import ConfigError
from rlr.scoring import IMAGE_SCORES, MAP_SCORES


@dataclass
class DataConfig:
    root: str = ""  # empty: the built-in demo data
    format: str = "mvtec"  # "mvtec", "visa" (raw VisA release) or "folder"
    classes: list[str] | None = None  # None: every class found under root
    image_size: int = 256
    # folder format only: the user's own data
    train_dir: str = ""
    test_normal_dir: str = ""
    test_abnormal_dir: str = ""
    mask_dir: str = ""


@dataclass
class BackboneConfig:
    name: str = "tf_efficientnet_lite0"
    out_indices: list[int] = field(default_factory=lambda: [2, 3])
    weights_file: str | None = None
    allow_download: bool = False
    smoothing: int = 3  # 3x3 average pooling of every map, stride 1
    merge: bool = False  # resize every level to the coarsest one and concatenate (UniAD)


MODELS = ("rlr", "uniad")
FUSIONS = ("alpha", "theta")


@dataclass
class ModelConfig:
    name: str = "rlr"  # "rlr" or "uniad"
    hidden_dims: list[int] = field(default_factory=lambda: [256, 512])  # one per feature level
    num_layers: int = 4  # UniAD: encoder layers, and as many decoder layers
    num_heads: int = 8
    ffn_ratio: int = 4
    windows: list[int] | None = None  # RLR: LCA/MLKA window per level (None: the paper's); UniAD: hidden neighbourhood
    dropout: float = 0.0
    fusion: str = "alpha"  # "alpha": alpha * LCA + MLKA; "theta": theta1 * MLKA + theta2 * LCA, learned per layer
    alpha: float = 2.0
    theta_init: list[float] = field(default_factory=lambda: [1.0, 1.0])  # (theta1 for MLKA, theta2 for LCA)
    num_references: int = 1
    diversity_weight: float = 1.0  # weight of the mean pairwise cosine between references (K > 1)


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 4  # per process: under torchrun the global batch is batch_size x processes
    lr: float = 1e-4
    optimizer: str = "adam"  # "adam" or "adamw"
    weight_decay: float = 0.0
    lr_step_epoch: int = 0  # multiply the learning rate by 0.1 after this epoch (0: never)
    grad_clip: float = 0.0  # clip the gradient norm to this (0: no clipping)
    jitter_scale: float = 4.0
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    num_workers: int = 0
    feature_batch_size: int = 16
    cache_dir: str = ""  # empty: $RLR_CACHE_DIR/features or ~/.cache/rlr/features
    precision: str = "fp32"  # "fp32" or "bf16": bfloat16 autocast of the forward pass (for GPUs; runs on CPU, slowly)
    compile: bool = False  # torch.compile the reconstructor (the first steps wait for the compiler)


@dataclass
class EvalConfig:
    batch_size: int = 16
    map_score: str = "auto"  # "mse_cos" (RLR), "l2" (UniAD); auto: the model's own
    image_score: str = "auto"  # "gaussian_max" (RLR), "mean_pool_max" (UniAD); auto: the model's own
    image_score_sigma: float = 4.0  # Gaussian sigma before the max that gives the image score
    image_score_pool: int = 16  # average-pooling size before the max (mean_pool_max)
    pixel_map_sigma: float = 0.0  # smoothing of the maps used for pixel metrics (paper: none)


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from a dict, naming unknown keys and nested sections."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key {where + '.' if where else ''}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> RunConfig:
    config = _build(RunConfig, values, "")
    validate(config)
    return config


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (or start from the defaults) and apply `key.sub=value` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
    for item in overrides:
        apply_override(values, item)
    return from_dict(values)


def apply_override(values: dict[str, Any], item: str) -> None:
    """Set `section.key=value` in a nested dict; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = values
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{key}' is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        node[keys[-1]] = raw


def config_differences(first: dict[str, Any], second: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key whose value differs between two config dicts, as 'key: a != b'."""
    differences = []
    for key in sorted(set(first) | set(second)):
        a, b = first.get(key), second.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} != {b!r}")
    return differences


def save_config(config: RunConfig, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def validate(config: RunConfig) -> None:
    """Catch inconsistent settings before any work starts."""
    levels = 1 if config.backbone.merge else len(config.backbone.out_indices)
    what = "merged backbone map" if config.backbone.merge else f"{levels} levels of backbone.out_indices"
    if len(config.model.hidden_dims) != levels:
        raise ConfigError(f"model.hidden_dims has {len(config.model.hidden_dims)} entries but the {what} needs {levels}")
    if config.model.windows is not None and len(config.model.windows) != levels:
        raise ConfigError(f"model.windows has {len(config.model.windows)} entries, expected {levels}")
    choices = {
        "model.name": (config.model.name, MODELS),
        "model.fusion": (config.model.fusion, FUSIONS),
        "data.format": (config.data.format, ("mvtec", "visa", "folder")),
        "train.optimizer": (config.train.optimizer, ("adam", "adamw")),
        "train.precision": (config.train.precision, ("fp32", "bf16")),
        "eval.map_score": (config.eval.map_score, ("auto", *MAP_SCORES)),
        "eval.image_score": (config.eval.image_score, ("auto", *IMAGE_SCORES)),
    }
    for key, (value, known) in choices.items():
        if value not in known:
            raise ConfigError(f"unknown {key} '{value}' (known: {', '.join(known)})")
    if config.model.name == "uniad" and not config.backbone.merge:
        raise ConfigError("model.name=uniad reconstructs one merged map: set backbone.merge=true")
    if len(config.model.theta_init) != 2:
        raise ConfigError("model.theta_init needs two values: (theta1 for MLKA, theta2 for LCA)")
    if config.model.num_references < 1:
        raise ConfigError("model.num_references must be at least 1")
    for key in ("epochs", "batch_size"):
        if getattr(config.train, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1")
    if not isinstance(config.train.compile, bool):
        raise ConfigError(f"train.compile must be true or false, got {config.train.compile!r}")
