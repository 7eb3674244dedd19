"""Dataset layer, bad input: each case raises one DataError naming the path and the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from rlr.data import (
    ImageDataset,
    discover_folder,
    discover_mvtec,
    image_size,
    load_image,
    load_mask,
    transforms,
)
from rlr.errors import DataError


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _one_class(root: Path, defect_masks: bool = True) -> Path:
    """A minimal valid MVTec-style tree: class 'nut' with one image per folder."""
    _save(root / "nut" / "train" / "good" / "000.png", Image.new("RGB", (8, 6)))
    _save(root / "nut" / "test" / "good" / "000.png", Image.new("RGB", (8, 6)))
    _save(root / "nut" / "test" / "hole" / "000.png", Image.new("RGB", (8, 6)))
    if defect_masks:
        _save(root / "nut" / "ground_truth" / "hole" / "000_mask.png", Image.new("L", (8, 6)))
    return root


def _raises(path: Path, problem: str) -> pytest.RaisesExc:
    """Expect a one-line DataError whose message starts with `path` and mentions `problem`."""
    pattern = rf"^{re.escape(str(path))}: .*{re.escape(problem)}[^\n]*$"
    return pytest.raises(DataError, match=pattern)


def test_missing_root(tmp_path: Path) -> None:
    with _raises(tmp_path / "nowhere", "dataset root not found"):
        discover_mvtec(tmp_path / "nowhere")


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data.zip").write_bytes(b"PK")
    with _raises(tmp_path / "data.zip", "dataset root is not a folder"):
        discover_mvtec(tmp_path / "data.zip")


def test_no_classes(tmp_path: Path) -> None:
    (tmp_path / "bottle" / "images").mkdir(parents=True)
    with _raises(tmp_path, "no classes found"):
        discover_mvtec(tmp_path)


def test_empty_class(tmp_path: Path) -> None:
    root = _one_class(tmp_path)
    (root / "nut" / "train" / "good" / "000.png").unlink()
    with _raises(root / "nut" / "train" / "good", "empty class 'nut' (no training images)"):
        discover_mvtec(root)


def test_truncated_image(tmp_path: Path) -> None:
    full = _save(tmp_path / "full.png", Image.effect_noise((64, 64), 50)).read_bytes()
    half = tmp_path / "half.png"
    half.write_bytes(full[: len(full) // 2])
    with _raises(half, "truncated or corrupt image"):
        load_image(half, 8)


def test_text_file_with_image_extension(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("not pixels")
    with _raises(fake, "not an image file"):
        load_image(fake, 8)


def test_non_image_file_in_image_folder(tmp_path: Path) -> None:
    root = _one_class(tmp_path)
    notes = root / "nut" / "train" / "good" / "notes.txt"
    notes.write_text("shot on tuesday")
    with _raises(notes, "not an image file"):
        discover_mvtec(root)


def test_non_image_file_in_folder_dataset(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a.png", Image.new("L", (4, 4)))
    notes = tmp_path / "train" / "notes.txt"
    notes.write_text("x")
    with _raises(notes, "not an image file"):
        discover_folder(tmp_path / "train")


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with _raises(empty, "empty file (0 bytes)"):
        load_image(empty, 8)


def test_missing_file(tmp_path: Path) -> None:
    with _raises(tmp_path / "gone.png", "file not found"):
        image_size(tmp_path / "gone.png")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = _save(tmp_path / "locked.png", Image.new("L", (4, 4)))

    def denied(*args: object, **kwargs: object) -> None:  # as the OS answers without read rights
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(transforms, "open", denied, raising=False)
    with _raises(locked, "cannot read file (permission denied)"):
        load_image(locked, 8)


def test_image_too_large(tmp_path: Path) -> None:
    big = _save(tmp_path / "big.png", Image.new("L", (100, 50)))
    with _raises(big, "image too large (5000 pixels > 4999)"):
        load_image(big, 8, max_pixels=4999)


def test_defect_image_without_mask(tmp_path: Path) -> None:
    root = _one_class(tmp_path, defect_masks=False)
    image = root / "nut" / "test" / "hole" / "000.png"
    with _raises(image, "defect image without its mask (expected "):
        discover_mvtec(root)


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    root = _one_class(tmp_path, defect_masks=False)
    mask = _save(root / "nut" / "ground_truth" / "hole" / "000_mask.png", Image.new("L", (6, 8)))
    with _raises(mask, "mask size 6x8 differs from its image's size 8x6"):
        load_mask(mask, 4, expected_size=(8, 6))
    defects = [r for r in discover_mvtec(root).test["nut"] if r.mask_path is not None]
    with _raises(mask, "mask size 6x8 differs from its image's size 8x6"):
        ImageDataset(defects, 4)[0]


def test_mask_folder_without_abnormal_images(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a.png", Image.new("L", (4, 4)))
    (tmp_path / "masks").mkdir()
    with _raises(tmp_path / "masks", "masks given without a folder of abnormal test images"):
        discover_folder(tmp_path / "train", mask_dir=tmp_path / "masks")


def test_two_masks_for_one_image(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a.png", Image.new("L", (4, 4)))
    image = _save(tmp_path / "bad" / "b.png", Image.new("L", (4, 4)))
    _save(tmp_path / "masks" / "b.png", Image.new("L", (4, 4)))
    _save(tmp_path / "masks" / "b_mask.png", Image.new("L", (4, 4)))
    with _raises(image, "several masks match"):
        discover_folder(tmp_path / "train", None, tmp_path / "bad", tmp_path / "masks")
