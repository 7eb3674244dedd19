"""Discover a user's own data laid out as plain folders (listing only; nothing is decoded).

Several classes (`data.root`): each sub-folder of the root is a class, named after it, holding
`good/` (normal images), any number of defect folders `<defect>/` (abnormal images, the folder
name is the defect type) and optionally `masks/`, either flat or one sub-folder per defect type.
A root that holds images itself is one class of good images, named after the root.

One class from explicit folders (`data.train_dir`, ...): a folder of normal training images, and optionally folders of normal and abnormal
test images and a folder of masks. A mask belongs to the abnormal image with the same stem,
named `<stem>.<ext>` or `<stem>_mask.<ext>` (any image extension). Abnormal images may lack a
mask: their record has `mask_path=None`, the dataset returns an all-zero mask, and only the
image-level metrics are meaningful for them (a caller can tell them apart by
`label == ANOMALOUS and mask_path is None`).
"""

from __future__ import annotations

import os
from pathlib import Path

from rlr.data.split import (
    DatasetSplit,
    MaskIndex,
    ProblemHandler,
    is_image_file,
    link_problem,
    list_entries,
    list_images,
    raise_problem,
    select_classes,
)
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

    train = [ImageRecord(path, class_name, NORMAL) for path in _images(folders["training images"], "training images")]
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


GOOD = "good"
MASKS = "masks"
_LAYOUT = f"<class>/{GOOD}/, optional <class>/<defect>/ and <class>/{MASKS}/"


def is_class_folders(root: Path) -> bool:
    """Whether `root` looks like own data: images directly inside, or a sub-folder with `good/`."""
    entries = list_entries(root, lambda _: None)
    return any(is_image_file(e) for e in entries) or any((e / GOOD).is_dir() for e in entries)


def find_folder_classes(root: str | os.PathLike) -> list[str]:
    """Class names of own data at `root`: its sub-folders holding `good/`, or root's own name for
    the one-class form (a folder of good images)."""
    root = _folder(root, "data.root")
    entries = list_entries(root)
    if any(is_image_file(entry) for entry in entries):
        return [root.name]
    names = [entry.name for entry in entries if (entry / GOOD).is_dir()]
    if not names:
        raise DataError(f"{root}: no classes found (expected images, or {_LAYOUT})")
    return names


def _mask_indexes(class_dir: Path, on_problem: ProblemHandler) -> dict[str | None, MaskIndex]:
    """`masks/` holds either every defect's masks (key None) or one sub-folder per defect type."""
    folder = class_dir / MASKS
    if not folder.is_dir():
        return {}
    entries = list_entries(folder, on_problem)
    if any(entry.is_dir() for entry in entries):
        return {e.name: MaskIndex(e, MASK_SUFFIXES, on_problem) for e in entries if e.is_dir()}
    return {None: MaskIndex(folder, MASK_SUFFIXES, on_problem)}


def _scan_class(class_dir: Path, on_problem: ProblemHandler) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """One class folder's training normals and abnormal test images."""
    name = class_dir.name
    train = [ImageRecord(path, name, NORMAL) for path in list_images(class_dir / GOOD, on_problem)]
    if not train:
        on_problem(DataError(f"{class_dir / GOOD}: empty class '{name}' (no good images)"))
    masks = _mask_indexes(class_dir, on_problem)
    test: list[ImageRecord] = []
    owners: dict[Path, Path] = {}
    for entry in list_entries(class_dir, on_problem):
        if entry.name in (GOOD, MASKS):
            continue
        if not entry.is_dir():
            problem = link_problem(entry) or f"unexpected file (expected {_LAYOUT})"
            on_problem(DataError(f"{entry}: {problem}"))
            continue
        index = masks.get(entry.name, masks.get(None))
        for image in list_images(entry, on_problem):
            mask = index.find(image, on_problem) if index else None
            if mask is not None and owners.setdefault(mask, image) != image:
                on_problem(
                    DataError(f"{mask}: mask of both {owners[mask]} and {image} (put masks in {MASKS}/<defect>/)")
                )
            test.append(ImageRecord(image, name, ANOMALOUS, entry.name, mask))
    return train, test


def scan_class_folders(
    root: str | os.PathLike,
    classes: list[str] | str | None = None,
    on_problem: ProblemHandler = raise_problem,
) -> DatasetSplit:
    """List own data, one sub-folder per class (or one folder of good images), sending each
    problem inside a class to `on_problem`; there are no test normals (see hold_out_normals)."""
    root = Path(root)
    available = find_folder_classes(root)
    names = select_classes(root, available, classes)
    if available == [root.name]:
        train = [ImageRecord(path, root.name, NORMAL) for path in list_images(root, on_problem)]
        return DatasetSplit(root=root, class_names=names, train=train, test={root.name: []})
    train: list[ImageRecord] = []
    test: dict[str, list[ImageRecord]] = {}
    for name in names:
        class_train, test[name] = _scan_class(root / name, on_problem)
        train += class_train
    return DatasetSplit(root=root, class_names=names, train=train, test=test)
