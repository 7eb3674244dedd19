"""Dataset layer, happy paths: discovery, decoding of every image mode, masks, Dataset, folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from torch.utils.data import DataLoader

from rlr.data import (
    ANOMALOUS,
    NORMAL,
    ImageDataset,
    discover_folder,
    discover_mvtec,
    image_size,
    load_image,
    load_mask,
)
from rlr.errors import DataError

# class -> (train images, test good images, {defect type: images}); the tree is built from this.
LAYOUT = {
    "bolt": (3, 2, {"crack": 2, "scratch": 1}),
    "cup": (4, 1, {"dent": 3}),
    "gear": (2, 2, {}),
}


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_mvtec(root: Path, layout: dict = LAYOUT, size: tuple[int, int] = (12, 10)) -> Path:
    for name, (n_train, n_good, defects) in layout.items():
        for i in range(n_train):
            image = Image.new("RGB", size, (i, 0, 0))
            _save(root / name / "train" / "good" / f"{i:03d}.png", image)
        for i in range(n_good):
            _save(root / name / "test" / "good" / f"{i:03d}.png", Image.new("RGB", size))
        for defect, count in defects.items():
            for i in range(count):
                _save(root / name / "test" / defect / f"{i:03d}.png", Image.new("RGB", size))
                mask = root / name / "ground_truth" / defect / f"{i:03d}_mask.png"
                _save(mask, Image.new("L", size, 255))
    return root


# --- MVTec discovery -------------------------------------------------------------------------


def test_mvtec_discovery_counts(tmp_path: Path) -> None:
    split = discover_mvtec(make_mvtec(tmp_path))
    assert split.root == tmp_path
    assert split.class_names == sorted(LAYOUT)
    for name, (n_train, n_good, defects) in LAYOUT.items():
        test = split.test[name]
        assert sum(r.class_name == name for r in split.train) == n_train
        assert sum(r.label == NORMAL for r in test) == n_good
        assert sum(r.label == ANOMALOUS for r in test) == sum(defects.values())
        for defect, count in defects.items():
            assert sum(r.defect_type == defect for r in test) == count


def test_mvtec_unified_train_is_union_of_classes(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    split = discover_mvtec(root)
    expected = sorted(p for name in LAYOUT for p in (root / name / "train" / "good").iterdir())
    assert sorted(r.image_path for r in split.train) == expected
    assert all(r.label == NORMAL and r.mask_path is None for r in split.train)


def test_mvtec_subset_of_classes_in_given_order(tmp_path: Path) -> None:
    split = discover_mvtec(make_mvtec(tmp_path), classes=["cup", "bolt"])
    assert split.class_names == ["cup", "bolt"]
    assert set(split.test) == {"cup", "bolt"}
    assert {r.class_name for r in split.train} == {"cup", "bolt"}


def test_mvtec_masks_matched_to_defect_images(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    for record in discover_mvtec(root).test["bolt"]:
        if record.label == NORMAL:
            assert record.mask_path is None and record.defect_type == "good"
        else:
            expected = root / "bolt" / "ground_truth" / record.defect_type
            assert record.mask_path == expected / f"{record.image_path.stem}_mask.png"


def test_mvtec_listing_sorted_ignores_hidden_and_ignores_non_class_folders(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "bolt" / "train" / "good" / ".DS_Store").write_bytes(b"junk")
    (root / "bolt" / "train" / "good" / "Thumbs.db").write_bytes(b"junk")
    (root / "docs").mkdir()
    (root / "LICENSE.txt").write_text("licence")
    _save(root / "bolt" / "train" / "good" / "010.JPG", Image.new("RGB", (12, 10)))
    split = discover_mvtec(root)
    assert split.class_names == sorted(LAYOUT)
    bolt = [r.image_path.name for r in split.train if r.class_name == "bolt"]
    assert bolt == ["000.png", "001.png", "002.png", "010.JPG"]


def test_mvtec_unknown_class_lists_available(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown class\(es\) wheel; available: bolt, cup, gear"):
        discover_mvtec(make_mvtec(tmp_path), classes=["wheel"])


# --- images of every mode and size ------------------------------------------------------------


def _image_of_mode(mode: str, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, size[::-1], dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(rng.random(size[::-1], dtype=np.float32))
    return grey.convert(mode)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"])
@pytest.mark.parametrize("size", [(7, 13), (300, 5), (16, 16)])
def test_every_mode_and_size_loads_as_rgb_square(tmp_path: Path, mode: str, size: tuple) -> None:
    suffix = {"CMYK": ".jpg", "F": ".tif", "I": ".tif"}.get(mode, ".png")
    path = _save(tmp_path / f"image{suffix}", _image_of_mode(mode, size))
    assert Image.open(path).mode == mode  # the file really holds this mode
    image = load_image(path, 16)
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0


@pytest.mark.parametrize("value, expected", [(65535, 1.0), (0, 0.0), (32768, 32768 / 65535)])
def test_16_bit_image_is_scaled_by_its_range(tmp_path: Path, value: int, expected: float) -> None:
    array = np.full((6, 6), value, dtype=np.uint16)
    image = load_image(_save(tmp_path / "deep.png", Image.fromarray(array)), 4)
    assert torch.allclose(image, torch.full((3, 4, 4), expected))


def test_8_bit_colours_are_kept_and_alpha_is_dropped(tmp_path: Path) -> None:
    path = _save(tmp_path / "rgba.png", Image.new("RGBA", (5, 5), (255, 0, 51, 0)))
    image = load_image(path, 5)
    assert torch.allclose(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))


def test_palette_transparency_loads_without_warnings(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255])
    path = tmp_path / "palette.png"
    palette.save(path, transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_image(path, 4)
    assert torch.allclose(image, torch.ones(3, 4, 4))


def test_exif_rotated_jpeg_is_shown_upright(tmp_path: Path) -> None:
    # Stored 40 wide, 20 high, left half white; orientation 6 means "rotate 90 degrees clockwise
    # to display", so the upright image is 20 wide, 40 high with the white half on top.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = 255
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    assert image_size(path) == (20, 40)
    image = load_image(path, 8)
    assert image[:, :4].mean() > 0.9 and image[:, 4:].mean() < 0.1
    mask = _save(tmp_path / "rotated_mask.png", Image.new("L", (20, 40), 255))
    assert load_mask(mask, 8, expected_size=image_size(path)).shape == (1, 8, 8)


# --- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 128, 255])
def test_mask_binarised_above_zero_and_resized_nearest(tmp_path: Path, value: int) -> None:
    array = np.zeros((4, 4), dtype=np.uint8)
    array[:, :2] = value  # left half anomalous
    mask = load_mask(_save(tmp_path / "mask.png", Image.fromarray(array)), 8)
    assert mask.shape == (1, 8, 8) and mask.dtype == torch.float32
    expected = torch.zeros(1, 8, 8)
    expected[..., :4] = 1.0
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("mode", ["1", "P", "RGB", "RGBA", "I;16"])
def test_mask_of_any_mode_is_binary(tmp_path: Path, mode: str) -> None:
    array = np.zeros((6, 6), dtype=np.uint8)
    array[2:4, 2:4] = 200
    image = Image.fromarray(array)
    image = Image.fromarray(array.astype(np.uint16)) if mode == "I;16" else image.convert(mode)
    mask = load_mask(_save(tmp_path / "mask.png", image), 6)
    assert torch.equal(mask[0], torch.from_numpy(array > 0).float())


# --- Dataset ----------------------------------------------------------------------------------


def test_dataset_returns_samples(tmp_path: Path) -> None:
    split = discover_mvtec(make_mvtec(tmp_path))
    records = split.test["bolt"]
    dataset = ImageDataset(records, image_size=8)
    assert len(dataset) == len(records)
    for record, sample in zip(records, dataset):
        assert sample["image"].shape == (3, 8, 8) and sample["mask"].shape == (1, 8, 8)
        assert sample["label"] == record.label
        assert sample["class_name"] == "bolt"
        assert sample["path"] == str(record.image_path)
        assert sample["mask"].sum() == (64 if record.label == ANOMALOUS else 0)
    batch = next(iter(DataLoader(dataset, batch_size=len(records))))
    assert batch["image"].shape == (len(records), 3, 8, 8)
    assert batch["label"].tolist() == [r.label for r in records]


# --- folder dataset ---------------------------------------------------------------------------


def test_folder_dataset_with_masks_matched_by_stem(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / "train" / f"ok{i}.png", Image.new("RGB", (8, 8)))
    _save(tmp_path / "test_ok" / "a.jpg", Image.new("RGB", (8, 8)))
    for stem in ("b1", "b2", "b3"):
        _save(tmp_path / "test_bad" / f"{stem}.png", Image.new("RGB", (8, 8)))
    _save(tmp_path / "masks" / "b1.png", Image.new("L", (8, 8), 255))
    _save(tmp_path / "masks" / "b2_mask.bmp", Image.new("L", (8, 8), 255))
    folders = [tmp_path / name for name in ("train", "test_ok", "test_bad", "masks")]
    split = discover_folder(*folders, class_name="widget")
    assert split.root == tmp_path and split.class_names == ["widget"]
    assert [r.image_path.name for r in split.train] == ["ok0.png", "ok1.png", "ok2.png"]
    masks = {r.image_path.name: r.mask_path for r in split.test["widget"]}
    assert masks == {
        "a.jpg": None,
        "b1.png": tmp_path / "masks" / "b1.png",
        "b2.png": tmp_path / "masks" / "b2_mask.bmp",
        "b3.png": None,  # allowed: an all-zero mask, image-level metrics only
    }
    labels = [r.label for r in split.test["widget"]]
    assert labels == [NORMAL, ANOMALOUS, ANOMALOUS, ANOMALOUS]
    sample = ImageDataset(split.test["widget"], 4)[3]
    assert sample["label"] == ANOMALOUS and sample["mask"].sum() == 0


def test_folder_dataset_train_only(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "x.png", Image.new("L", (8, 8)))
    split = discover_folder(tmp_path / "train")
    assert split.class_names == ["custom"] and len(split.train) == 1
    assert split.test == {"custom": []}


def test_folder_dataset_rejects_a_folder_given_twice(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "x.png", Image.new("L", (8, 8)))
    with pytest.raises(DataError, match="given both for training images and for normal test"):
        discover_folder(tmp_path / "train", test_normal_dir=tmp_path / "train")
