"""Run configuration: typed dataclasses, YAML in and out, and `--section.key value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, get_type_hints

import yaml

from rlr.atomic import write_text
from rlr.errors import ConfigError
from rlr.models import DEFAULT_MODEL, list_models, model_spec
from rlr.models.base import ModelConfig
from rlr.models.losses import LOSSES
from rlr.scoring import IMAGE_SCORES, MAP_SCORES
from rlr.validation import check_choice, check_range


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
    merge: bool = False  # resize every level to the coarsest one and concatenate: one map


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 4  # per process: under torchrun the global batch is batch_size x processes
    lr: float = 1e-4
    optimizer: str = "adam"  # "adam" or "adamw"
    weight_decay: float = 0.0
    lr_step_epoch: int = 0  # schedule "step": multiply the learning rate by 0.1 after this epoch (0: never)
    schedule: str = "step"  # "step" (constant, or the lr_step_epoch drop) or "cosine" (decay to lr x min_lr_ratio at the last step)
    warmup_steps: int = 0  # linear warm-up from 0 over this many optimizer steps (either schedule)
    min_lr_ratio: float = 0.1  # schedule "cosine": the final learning rate as a share of lr
    loss: str = "auto"  # "mse", "mse_cos" (MSE + cosine distance), "cosine"; auto: the model's own
    hard_fraction: float = 1.0  # share of tokens, the worst reconstructed, whose cosine distance keeps its full gradient (1: all)
    hard_factor: float = 0.1  # gradient factor of the other, well reconstructed tokens
    hard_ramp_steps: int = 1000  # the share falls linearly from 1 to hard_fraction over this many steps
    release_stepping: bool = False  # one backward and Adam step per level on a shared optimizer (the authors' release)
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
    map_score: str = "auto"  # "mse_cos", "l2", "cosine"; auto: the model's own
    image_score: str = "auto"  # "gaussian_max", "mean_pool_max"; auto: the model's own
    image_score_sigma: float = 4.0  # Gaussian sigma before the max that gives the image score
    image_score_top_percent: float = 0.0  # gaussian_max: mean of the top q % of the smoothed map (0: its maximum)
    image_score_pool: int = 16  # average-pooling size before the max (mean_pool_max)
    pixel_map_sigma: float = 0.0  # smoothing of the maps used for pixel metrics (paper: none)


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=lambda: model_spec(DEFAULT_MODEL).config())  # its class: by model.name
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from a dict, naming unknown keys and nested sections."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = _keys(cls)
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config key {where + '.' if where else ''}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        inner = f"{where}.{key}" if where else key
        if hint is ModelConfig:
            kwargs[key] = _build_model_section(value or {}, inner)
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, inner)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _build_model_section(values: dict[str, Any], where: str) -> ModelConfig:
    """The section class of the model `name` picks, from the registry; another model's key is named as such."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    spec = model_spec(values.get("name", DEFAULT_MODEL))
    values = spec.config.upgrade(values)
    own = _keys(spec.config)
    for key in sorted(set(values) - own):
        owners = [model_spec(name) for name in list_models() if key in _keys(model_spec(name).config)]
        if owners:
            raise ConfigError(
                f"{where}.{key} is not a key of {where}.name={spec.name}: keys like it are "
                f"{' and '.join(o.title for o in owners)} options; {spec.name}'s keys: {', '.join(sorted(own))}"
            )
    return _build(spec.config, values, where)


def _keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


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
    node.pop(keys[-1], None)  # re-inserted: a section's keys stay in the order they were last set
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
    """Catch inconsistent settings before any work starts; the model checks its own section."""
    choices = {
        "data.format": (config.data.format, ("mvtec", "visa", "folder")),
        "train.optimizer": (config.train.optimizer, ("adam", "adamw")),
        "train.precision": (config.train.precision, ("fp32", "bf16")),
        "train.schedule": (config.train.schedule, ("step", "cosine")),
        "train.loss": (config.train.loss, ("auto", *LOSSES)),
        "eval.map_score": (config.eval.map_score, ("auto", *MAP_SCORES)),
        "eval.image_score": (config.eval.image_score, ("auto", *IMAGE_SCORES)),
    }
    for key, (value, known) in choices.items():
        check_choice(key, value, known)
    model_spec(config.model.name).validate(config)
    for key in ("epochs", "batch_size"):
        if getattr(config.train, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1")
    for key in ("compile", "release_stepping"):
        if not isinstance(getattr(config.train, key), bool):
            raise ConfigError(f"train.{key} must be true or false, got {getattr(config.train, key)!r}")
    _validate_recipe(config)


def training_objective(config: RunConfig) -> str:
    """train.loss, with 'auto' resolved to the model's own objective."""
    return model_spec(config.model.name).loss if config.train.loss == "auto" else config.train.loss


def _validate_recipe(config: RunConfig) -> None:
    """The training and scoring options beyond the paper's recipe: ranges, and refusals where they would do nothing."""
    t = config.train
    check_range("train.hard_fraction", t.hard_fraction, 0.0, 1.0, low_open=True)
    check_range("train.hard_factor", t.hard_factor, 0.0, 1.0)
    check_range("train.min_lr_ratio", t.min_lr_ratio, 0.0, 1.0)
    check_range("eval.image_score_top_percent", config.eval.image_score_top_percent, 0.0, 100.0)
    for key in ("warmup_steps", "hard_ramp_steps"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key} must be 0 or more, got {getattr(t, key)!r}")
    if t.hard_fraction < 1.0 and training_objective(config) == "mse":
        raise ConfigError("train.hard_fraction mines the cosine term: choose train.loss mse_cos or cosine")
