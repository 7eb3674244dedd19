"""The built-in demo set: MVTec layout, exact masks, determinism, cache reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlr.data import demo
from rlr.errors import ConfigError

SIZES = {"image_size": 64, "n_train": 3, "n_test_good": 2, "n_test_defect": 2}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.generate_demo(tmp_path_factory.mktemp("demo") / "set", seed=0, **SIZES)


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_constants_cover_enough_classes_and_kinds() -> None:
    assert len(demo.DEMO_CLASSES) >= 4
    assert len(demo.DEMO_DEFECT_KINDS) >= 3
    used = {k for kinds in demo.DEMO_DEFECTS_BY_CLASS.values() for k in kinds}
    assert used == set(demo.DEMO_DEFECT_KINDS)
    assert all(len(kinds) >= 2 for kinds in demo.DEMO_DEFECTS_BY_CLASS.values())


def test_layout_matches_mvtec(small_set: Path) -> None:
    classes = sorted(p.name for p in small_set.iterdir() if p.is_dir())
    assert classes == sorted(demo.DEMO_CLASSES)
    for name in classes:
        folder = small_set / name
        assert len(list((folder / "train" / "good").glob("*.png"))) == SIZES["n_train"]
        assert len(list((folder / "test" / "good").glob("*.png"))) == SIZES["n_test_good"]
        kinds = sorted(p.name for p in (folder / "test").iterdir() if p.name != "good")
        assert kinds == sorted(demo.DEMO_DEFECTS_BY_CLASS[name])
        for kind in kinds:
            images = sorted((folder / "test" / kind).glob("*.png"))
            assert len(images) == SIZES["n_test_defect"]
            masks = sorted((folder / "ground_truth" / kind).glob("*.png"))
            assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]


def test_info_written(small_set: Path) -> None:
    info = json.loads((small_set / demo.INFO_NAME).read_text())
    assert info["seed"] == 0 and info["generator_version"] == demo.GENERATOR_VERSION
    assert {k: info[k] for k in SIZES} == SIZES
    assert info["classes"] == list(demo.DEMO_CLASSES)


def test_images_are_rgb_at_size_and_masks_binary(small_set: Path) -> None:
    for path in small_set.rglob("*.png"):
        with Image.open(path) as image:
            assert image.size == (SIZES["image_size"],) * 2
            if path.parts[-3] == "ground_truth":
                assert image.mode == "L"
                values = np.unique(np.asarray(image))
                assert set(values.tolist()) == {0, 255}, path
            else:
                assert image.mode == "RGB"


def test_same_seed_same_bytes_other_seed_differs(small_set: Path, tmp_path: Path) -> None:
    again = demo.generate_demo(tmp_path / "again", seed=0, **SIZES)
    assert _files(again) == _files(small_set)
    other = _files(demo.generate_demo(tmp_path / "other", seed=1, **SIZES))
    same = _files(small_set)
    for name in demo.DEMO_CLASSES:
        key = f"{name}/train/good/000.png"
        assert other[key] != same[key]


@pytest.mark.parametrize("class_name", demo.DEMO_CLASSES)
def test_mask_marks_exactly_the_changed_pixels(class_name: str) -> None:
    for kind in demo.DEMO_DEFECTS_BY_CLASS[class_name]:
        for index in range(3):
            clean, defective, mask = demo.make_defect(class_name, kind, index, image_size=128)
            assert mask.dtype == bool and mask.any()
            assert 0.001 < mask.mean() < 0.15, (kind, mask.mean())
            np.testing.assert_array_equal(defective[~mask], clean[~mask])
            assert (defective[mask] != clean[mask]).any(axis=-1).all()


def test_files_on_disk_keep_masks_exact(small_set: Path) -> None:
    for class_name in demo.DEMO_CLASSES:
        kind = demo.DEMO_DEFECTS_BY_CLASS[class_name][0]
        clean, _, _ = demo.make_defect(class_name, kind, 1, image_size=SIZES["image_size"])
        image = np.asarray(Image.open(small_set / class_name / "test" / kind / "001.png"))
        mask_path = small_set / class_name / "ground_truth" / kind / "001_mask.png"
        mask = np.asarray(Image.open(mask_path))
        np.testing.assert_array_equal(image[mask == 0], clean[mask == 0])
        assert (image[mask > 0] != clean[mask > 0]).any(axis=-1).all()


def test_normal_images_vary() -> None:
    for class_name in demo.DEMO_CLASSES:
        images = [demo.make_normal(class_name, "train", i, image_size=64) for i in range(4)]
        for a, b in zip(images, images[1:]):
            assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_sample_independent_of_generation_order() -> None:
    first = demo.make_normal("grass", "good", 3, seed=7, image_size=64)
    demo.make_defect("brick", "hole", 0, seed=7, image_size=64)
    again = demo.make_normal("grass", "good", 3, seed=7, image_size=64)
    np.testing.assert_array_equal(again, first)


def test_ensure_demo_reuses_complete_and_regenerates_incomplete(tmp_path: Path) -> None:
    root = demo.ensure_demo(tmp_path, seed=0, **SIZES)
    assert root.parent == tmp_path and (root / demo.INFO_NAME).is_file()
    marker = root / "marker.txt"
    marker.write_text("kept")
    assert demo.ensure_demo(tmp_path, seed=0, **SIZES) == root
    assert marker.exists()

    (root / demo.INFO_NAME).unlink()
    assert demo.ensure_demo(tmp_path, seed=0, **SIZES) == root
    assert not marker.exists() and (root / demo.INFO_NAME).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folders left


def test_ensure_demo_folder_encodes_parameters(tmp_path: Path) -> None:
    a = demo.ensure_demo(tmp_path, seed=0, **SIZES)
    b = demo.ensure_demo(tmp_path, seed=0, **{**SIZES, "n_train": 4})
    c = demo.ensure_demo(tmp_path, seed=2, **SIZES)
    assert len({a, b, c}) == 3
    assert len(list((b / "brick" / "train" / "good").glob("*.png"))) == 4


def test_ensure_demo_default_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLR_CACHE_DIR", str(tmp_path))
    root = demo.ensure_demo(seed=0, **SIZES)
    assert root.parent == tmp_path / "demo"


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_info", fail)
    with pytest.raises(KeyboardInterrupt):
        demo.generate_demo(tmp_path / "set", **SIZES)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs", [{"n_train": 0}, {"image_size": 8}, {"batch": 3}, {"n_test_good": 2.5}])
def test_bad_sizes_rejected(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        demo.ensure_demo(tmp_path, **kwargs)


def test_unknown_defect_kind_rejected() -> None:
    with pytest.raises(ConfigError):
        demo.make_defect("brick", "stain", 0)
