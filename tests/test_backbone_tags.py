"""Paper configs name the exact timm weights (architecture + tag) their authors used; no network."""

from pathlib import Path

import pytest
import timm
from timm.models import get_pretrained_cfg
from torch import nn

from rlr.config import load_config
from rlr.features.backbone import FeatureExtractor
from rlr.features.weights import PACKAGED

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# config file -> (timm architecture, weight tag, channels of the configured levels)
PINNED = {
    # the RLR release loads tf_efficientnet_b6_aa-80ba17e4.pth (AutoAugment)
    "rlr_mvtec.yaml": ("tf_efficientnet_b6", "aa_in1k", [72, 200]),
    "rlr_visa.yaml": ("tf_efficientnet_b6", "aa_in1k", [72, 200]),
    "rlr_plus_mvtec.yaml": ("tf_efficientnet_b6", "aa_in1k", [72, 200]),
    # the UniAD release loads lukemelas' efficientnet-b4-6ed6700e.pth: TF 'same' padding, AutoAugment
    "uniad_mvtec.yaml": ("tf_efficientnet_b4", "aa_in1k", [24, 32, 56, 160]),
}


def _features(name: str, out_indices: list[int]) -> nn.Module:
    return timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(out_indices))


def test_every_config_with_hub_weights_is_pinned():
    hub = {p.name for p in CONFIGS.glob("*.yaml") if load_config(p).backbone.name not in PACKAGED}
    assert hub == set(PINNED)


@pytest.mark.parametrize("config_file", sorted(PINNED))
def test_config_resolves_to_the_authors_weights(config_file):
    architecture, tag, channels = PINNED[config_file]
    backbone = load_config(CONFIGS / config_file).backbone
    net = _features(backbone.name, backbone.out_indices)
    assert (net.pretrained_cfg["architecture"], net.pretrained_cfg["tag"]) == (architecture, tag)
    assert net.feature_info.channels() == channels


def test_untagged_names_would_pick_other_weights():
    """Why the configs spell the tag out: timm's default tag for these names is another network."""
    assert get_pretrained_cfg("tf_efficientnet_b6").tag == "ns_jft_in1k"  # Noisy Student, JFT
    assert get_pretrained_cfg("wide_resnet50_2").tag == "racm_in1k"  # timm's own training
    torchvision = pytest.importorskip("torchvision.models")
    v1 = torchvision.Wide_ResNet50_2_Weights.IMAGENET1K_V1.url  # the weights the field usually means
    assert get_pretrained_cfg("wide_resnet50_2.tv_in1k").url == v1


def test_uniad_backbone_is_built_like_tensorflow_efficientnet():
    """UniAD's lukemelas EfficientNet pads like TF ('same') with batch-norm eps 1e-3: timm's tf_ variant."""
    backbone = load_config(CONFIGS / "uniad_mvtec.yaml").backbone
    net = _features(backbone.name, backbone.out_indices)
    assert type(net.conv_stem).__name__ == "Conv2dSame"
    assert net.bn1.eps == pytest.approx(1e-3)


def test_download_asks_timm_for_exactly_the_tag(monkeypatch):
    """allow_download passes `name.tag` to timm unchanged; the cache identity names the tag."""
    asked: list[str] = []
    create = timm.create_model

    def offline_create(name: str, pretrained: bool = False, **kwargs):
        if pretrained:
            asked.append(name)
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create)
    extractor = FeatureExtractor("tf_efficientnet_b6.aa_in1k", (2, 3), allow_download=True)
    assert asked == ["tf_efficientnet_b6.aa_in1k"]
    assert (extractor.weights.kind, extractor.weights.identity) == ("hub", "timm:timm/tf_efficientnet_b6.aa_in1k")
    assert extractor.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
