"""Discover a user's own data laid out as plain folders (listing only; nothing is decoded).

One class: a folder of normal training images, and optionally folders of normal and abnormal
test images and a folder of masks. A mask belongs to the abnormal image with the same stem,
named `<stem>.<ext>` or `<stem>_mask.<ext>` (any image extension). Abnormal images may lack a
mask: their record has `mask_path=None`, the dataset returns an all-zero mask, and only the
image-level metrics are meaningful for them (a caller can tell them apart by
`label == ANOMALOUS and mask_path is None`).
"""

from __future__ import annotations

import os
from pathlib import Path

from rlr.data.split import DatasetSplit, MaskIndex, list_images
from rlr.data.types import ANOMALOUS, NORMAL, ImageRecord
from rlr.errors import DataError

ABNORMAL = "abnormal"  # defect type of every abnormal test image: a folder carries no types
MASK_SUFFIXES = ("", "_mask")


def _folder(path: str | os.PathLike, role: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        problem = "not a folder" if path.exists() else "folder not found"
        raise DataError(f"{path}: {problem} ({role})")
    return path


def _images(folder: Path, role: str) -> list[Path]:
    images = list_images(folder)
    if not images:
        raise DataError(f"{folder}: no images ({role})")
    return images


def discover_folder(
    train_dir: str | os.PathLike,
    test_normal_dir: str | os.PathLike | None = None,
    test_abnormal_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    class_name: str = "custom",
) -> DatasetSplit:
    """List one class of plain image folders; DataError at the first problem.

    Every folder given must exist and hold only images. The split's root is the deepest
    folder that contains all the given ones.
    """
    if not class_name:
        raise ValueError("class_name must be a non-empty string")
    if mask_dir is not None and test_abnormal_dir is None:
        raise DataError(f"{mask_dir}: masks given without a folder of abnormal test images")
    given = {
        "training images": train_dir,
        "normal test images": test_normal_dir,
        "abnormal test images": test_abnormal_dir,
        "masks": mask_dir,
    }
    folders = {role: _folder(path, role) for role, path in given.items() if path is not None}
    roles_by_folder: dict[Path, str] = {}
    for role, folder in folders.items():
        first = roles_by_folder.setdefault(folder.resolve(), role)
        if first != role:
            raise DataError(f"{folder}: given both for {first} and for {role}")

    train = [
        ImageRecord(path, class_name, NORMAL)
        for path in _images(folders["training images"], "training images")
    ]
    test: list[ImageRecord] = []
    if "normal test images" in folders:
        test += [
            ImageRecord(path, class_name, NORMAL)
            for path in _images(folders["normal test images"], "normal test images")
        ]
    if "abnormal test images" in folders:
        masks = MaskIndex(folders["masks"], MASK_SUFFIXES) if "masks" in folders else None
        test += [
            ImageRecord(path, class_name, ANOMALOUS, ABNORMAL, masks.find(path) if masks else None)
            for path in _images(folders["abnormal test images"], "abnormal test images")
        ]
    root = Path(os.path.commonpath([folder.absolute() for folder in folders.values()]))
    return DatasetSplit(root=root, class_names=[class_name], train=train, test={class_name: test})
