"""Run configuration: typed dataclasses, YAML in and out, and `--section.key value` overrides."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, get_type_hints

import timm
import torch
import yaml

from rlr.atomic import write_text
from rlr.data.transforms import RESIZE_MODES
from rlr.errors import ConfigError
from rlr.models import DEFAULT_MODEL, list_models, model_spec
from rlr.models.base import ModelConfig
from rlr.models.losses import LOSSES
from rlr.scoring import IMAGE_SCORES, MAP_SCORES
from rlr.validation import check_choice, check_min, check_range, check_type

#: A config is a few kilobytes; a larger file is refused unread (so is any YAML alias, below).
MAX_CONFIG_BYTES = 1 << 20
_MAX_NESTING = 32  # sections, lists and lists of lists are a few levels deep
IMAGE_SIZES = (32, 4096)  # data.image_size: the backbone's coarsest map needs 32 px; 4096 px is 16M pixels


@dataclass
class DataConfig:
    root: str = ""  # empty: the built-in demo data
    format: str = "mvtec"  # "mvtec", "visa" (raw VisA release) or "folder"
    classes: list[str] | None = None  # None: every class found under root
    image_size: int = 256
    resize: str = "stretch"  # aspect ratio: "stretch", "letterbox" (pad with black) or "center_crop"
    normal_test_ratio: float = 0.0  # share of good images held out as test normals where a class has none
    split_seed: int = 0  # seed of that choice (kept apart from train.seed, so the test set stays put)
    # folder format, one class from explicit folders (else data.root holds <class>/good/, ...)
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
    schedule: str = (
        "step"  # "step" (constant, or the lr_step_epoch drop) or "cosine" (decay to lr x min_lr_ratio at the last step)
    )
    warmup_steps: int = 0  # linear warm-up from 0 over this many optimizer steps (either schedule)
    min_lr_ratio: float = 0.1  # schedule "cosine": the final learning rate as a share of lr
    loss: str = "auto"  # "mse", "mse_cos" (MSE + cosine distance), "cosine"; auto: the model's own
    hard_fraction: float = (
        1.0  # share of tokens, the worst reconstructed, whose cosine distance keeps its full gradient (1: all)
    )
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


#: What each key means, shown by `rlr config show`; a test keeps it complete for every section and model.
DESCRIPTIONS = {
    "name": "run name: the run folder is output_dir/name",
    "output_dir": "folder that holds the run folders",
    "data.root": "dataset folder (empty: the built-in demo data)",
    "data.format": "layout: mvtec, visa (raw VisA release) or folder (own data: <class>/good/, <class>/<defect>/)",
    "data.classes": "classes to use, in this order (null: every class found)",
    "data.image_size": "side in pixels every image is resized to",
    "data.resize": "aspect ratio: stretch (ignore it), letterbox (fit, pad with black) or center_crop (central square)",
    "data.normal_test_ratio": "share of good images held out as test normals where a class has none (0: none)",
    "data.split_seed": "seed of which good images are held out (apart from train.seed)",
    "data.train_dir": "folder format, one class: folder of normal training images (instead of data.root)",
    "data.test_normal_dir": "folder format, one class: folder of normal test images",
    "data.test_abnormal_dir": "folder format, one class: folder of abnormal test images",
    "data.mask_dir": "folder format, one class: masks of the abnormal images, matched by stem",
    "backbone.name": "timm model giving the frozen features",
    "backbone.out_indices": "backbone stages used as feature levels",
    "backbone.weights_file": "local weights file for the backbone (null: the offline default or the hub)",
    "backbone.allow_download": "may fetch weights from the timm hub",
    "backbone.smoothing": "average-pooling size applied to every feature map (stride 1)",
    "backbone.merge": "resize every level to the coarsest and concatenate them into one map",
    "train.epochs": "training epochs; the last epoch's model is the one reported",
    "train.batch_size": "images per step and process (torchrun: times the processes)",
    "train.lr": "learning rate",
    "train.optimizer": "adam or adamw",
    "train.weight_decay": "weight decay of the optimizer",
    "train.lr_step_epoch": "schedule step: multiply the learning rate by 0.1 after this epoch (0: never)",
    "train.schedule": "step (constant or one drop) or cosine (decay to lr x min_lr_ratio)",
    "train.warmup_steps": "linear learning-rate warm-up over this many steps",
    "train.min_lr_ratio": "schedule cosine: the final learning rate as a share of lr",
    "train.loss": "mse, mse_cos or cosine (auto: the model's own)",
    "train.hard_fraction": "share of tokens, the worst reconstructed, keeping the full cosine gradient (1: all)",
    "train.hard_factor": "gradient factor of the other, well reconstructed tokens",
    "train.hard_ramp_steps": "steps over which that share falls from 1 to hard_fraction",
    "train.release_stepping": "one backward and optimizer step per level, as the authors' release",
    "train.grad_clip": "clip the gradient norm to this (0: no clipping)",
    "train.jitter_scale": "scale of the feature jitter added while training",
    "train.seed": "seed of initialisation, shuffling and jitter",
    "train.device": "auto (a GPU when there is one), cpu, cuda, cuda:1, ...",
    "train.num_workers": "data-loading worker processes",
    "train.feature_batch_size": "images per backbone pass when extracting features",
    "train.cache_dir": "feature cache folder (empty: $RLR_CACHE_DIR/features or ~/.cache/rlr/features)",
    "train.precision": "fp32 or bf16 (autocast of the forward pass, for GPUs)",
    "train.compile": "torch.compile the reconstructor",
    "eval.batch_size": "images per pass when testing",
    "eval.map_score": "per-location score: mse_cos, l2 or cosine (auto: the model's own)",
    "eval.image_score": "image score: gaussian_max or mean_pool_max (auto: the model's own)",
    "eval.image_score_sigma": "Gaussian sigma before the max that gives the image score",
    "eval.image_score_top_percent": "gaussian_max: mean of the top q % of the smoothed map (0: its maximum)",
    "eval.image_score_pool": "mean_pool_max: average-pooling size before the max",
    "eval.pixel_map_sigma": "smoothing of the maps used for pixel metrics (paper: none)",
}


def describe(config: RunConfig) -> str:
    """The config as YAML, each key followed by its meaning as a comment: loadable as it stands."""
    lines = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"  {k}: {_flow(v)}  # {_meaning(config, f'{key}.{k}')}" for k, v in value.items()]
        else:
            lines.append(f"{key}: {_flow(value)}  # {DESCRIPTIONS[key]}")
    return "\n".join(lines) + "\n"


def _meaning(config: RunConfig, dotted: str) -> str:
    """A key's meaning: the model's own keys are described by the model's config class."""
    section, key = dotted.split(".", 1)
    if section != "model":
        return DESCRIPTIONS[dotted]
    if key == "name":
        return f"registered model: {', '.join(list_models())}"
    return type(config.model).descriptions.get(key, "(not described by this model)")


def _flow(value: Any) -> str:
    """One value as one line of YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return text.removesuffix("\n...").strip()


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from a dict, naming unknown keys and nested sections."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = _keys(cls)
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{where or 'config'}: key {key!r} is not a name")
    unknown = sorted(set(values) - names)
    if unknown:
        key = unknown[0] if unknown[0].isprintable() else repr(unknown[0])  # one line, whatever the YAML held
        raise ConfigError(f"unknown config key {where + '.' if where else ''}{key} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        inner = f"{where}.{key}" if where else key
        if hint is ModelConfig:
            kwargs[key] = _build_model_section({} if value is None else value, inner)
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, {} if value is None else value, inner)
        else:
            kwargs[key] = check_type(inner, value, hint)
    return cls(**kwargs)


def _build_model_section(values: dict[str, Any], where: str) -> ModelConfig:
    """The section class of the model `name` picks, from the registry; another model's key is named as such."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    spec = model_spec(check_type(f"{where}.name", values.get("name", DEFAULT_MODEL), str))
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
        text = _read_config_text(path)
        try:
            values = safe_yaml(text, str(path)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
    for item in overrides:
        apply_override(values, item)
    return from_dict(values)


def _read_config_text(path: Path) -> str:
    """A config file's text: a regular UTF-8 file of at most MAX_CONFIG_BYTES, or one line saying why not."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: config is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config too large ({info.st_size} bytes > {MAX_CONFIG_BYTES})")
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:  # grew after the stat
        raise ConfigError(f"{path}: config too large (> {MAX_CONFIG_BYTES} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


class _Loader(yaml.SafeLoader):
    """Safe YAML that also reads `1e-3` as a float (YAML 1.2; PyYAML's 1.1 needs `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def safe_yaml(text: str, where: str) -> Any:
    """Safe YAML without anchors or aliases (a few hundred bytes of aliases can expand to gigabytes).

    The event stream is checked before anything is built, so a refused document costs no memory;
    ConfigError for a refusal, yaml.YAMLError for text that is not YAML.
    """
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ConfigError(f"{where}: YAML anchors and aliases (&, *) are not allowed in a config")
        depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
        if depth > _MAX_NESTING:
            raise ConfigError(f"{where}: nested more than {_MAX_NESTING} levels deep")
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def apply_override(values: dict[str, Any], item: str) -> None:
    """Set `section.key=value` in a nested dict; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = values
    for key in keys[:-1]:
        if node.get(key) is None:  # an empty section in the file (`train:`) is a section
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{key}' is not a section")
    node.pop(keys[-1], None)  # re-inserted: a section's keys stay in the order they were last set
    node[keys[-1]] = parse_value(dotted, raw)


def parse_value(key: str, raw: str) -> Any:
    """An override's value: YAML (numbers, lists, null; no aliases), or the text itself where it is not YAML.

    Its type and range are checked with the rest of the config, by `from_dict`.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"override {key}: value too long ({len(raw)} characters)")
    try:
        return safe_yaml(raw, f"override {key}") if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def override_item(key: str, value: Any) -> str:
    """`key=value` for `apply_override` from a Python value, written as one line of YAML so it reads back as itself.

    How the Python API's overrides (`rlr.train(..., overrides={"train.epochs": 2})`) meet the
    CLI's: both are then checked by `from_dict`, with the same one-line errors naming the key.
    """
    if not isinstance(key, str) or "=" in key or not key.strip():
        raise ConfigError(f"override key {key!r} must be a dotted name like train.epochs")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    try:
        return f"{key}={_flow(value)}"
    except yaml.YAMLError:
        raise ConfigError(
            f"override {key}: a {type(value).__name__} is not a config value (numbers, text, lists, true/false, None)"
        ) from None


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
        "data.resize": (config.data.resize, RESIZE_MODES),
        "train.optimizer": (config.train.optimizer, ("adam", "adamw")),
        "train.precision": (config.train.precision, ("fp32", "bf16")),
        "train.schedule": (config.train.schedule, ("step", "cosine")),
        "train.loss": (config.train.loss, ("auto", *LOSSES)),
        "eval.map_score": (config.eval.map_score, ("auto", *MAP_SCORES)),
        "eval.image_score": (config.eval.image_score, ("auto", *IMAGE_SCORES)),
    }
    for key, (value, known) in choices.items():
        check_choice(key, value, known)
    check_range("data.image_size", config.data.image_size, *IMAGE_SIZES)
    check_range("data.normal_test_ratio", config.data.normal_test_ratio, 0.0, 1.0, high_open=True)
    _validate_backbone(config.backbone)
    t = config.train
    for key, value in (
        ("train.epochs", t.epochs),
        ("train.batch_size", t.batch_size),
        ("train.feature_batch_size", t.feature_batch_size),
        ("eval.batch_size", config.eval.batch_size),
        ("eval.image_score_pool", config.eval.image_score_pool),
    ):
        check_min(key, value, 1)
    check_min("train.num_workers", t.num_workers, 0)
    check_range("train.lr", t.lr, 0.0, 1.0, low_open=True)
    for key, value in (
        ("train.weight_decay", t.weight_decay),
        ("train.grad_clip", t.grad_clip),
        ("train.jitter_scale", t.jitter_scale),
        ("eval.image_score_sigma", config.eval.image_score_sigma),
        ("eval.pixel_map_sigma", config.eval.pixel_map_sigma),
    ):
        check_min(key, value, 0)
    try:
        torch.device(t.device if t.device != "auto" else "cpu")
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device '{t.device}' is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    model_spec(config.model.name).validate(config)
    _validate_recipe(config)


def _validate_backbone(b: BackboneConfig) -> None:
    """A timm model name, and stages it has: checked before any weights are looked for."""
    if not timm.is_model(b.name):
        raise ConfigError(f"backbone.name '{b.name}' is not a timm model (e.g. tf_efficientnet_lite0)")
    levels = backbone_levels(b.name)
    if not b.out_indices or len(set(b.out_indices)) != len(b.out_indices):
        raise ConfigError(f"backbone.out_indices must name distinct stages, got {b.out_indices}")
    for index in b.out_indices:
        check_range("backbone.out_indices", index, 0, levels - 1)
    check_min("backbone.smoothing", b.smoothing, 1)


@functools.cache
def backbone_levels(name: str) -> int:
    """How many feature stages timm's `features_only` model `name` has (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        return len(timm.create_model(name, pretrained=False, features_only=True).feature_info)


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
