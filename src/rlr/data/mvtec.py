"""Discover an MVTec AD style dataset on disk (listing only; no image is decoded here).

Layout, per class: `<root>/<class>/train/good/*` (normal training images),
`<root>/<class>/test/<type>/*` (`good` = normal, any other folder = one defect type) and
`<root>/<class>/ground_truth/<type>/<stem>_mask.<ext>` (one mask per defect image; `<stem>.<ext>`
also matches, as VisA's converter to this layout names them).
"""

from __future__ import annotations

import os
from pathlib import Path

from rlr.data.split import (
    DatasetSplit,
    MaskIndex,
    ProblemHandler,
    link_problem,
    list_entries,
    list_images,
    raise_problem,
    select_classes,
)
from rlr.data.types import ANOMALOUS, NORMAL, ImageRecord
from rlr.errors import DataError

GOOD = "good"
MASK_SUFFIXES = ("_mask", "")  # MVTec AD's own naming first: missing-mask errors name it


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the subfolders of `root` that hold `train/` or `test/`."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset root not found")
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is not a folder")
    names = [entry.name for entry in list_entries(root) if (entry / "train").is_dir() or (entry / "test").is_dir()]
    if not names:
        raise DataError(f"{root}: no classes found (expected <class>/train/good/ and <class>/test/<type>/)")
    return names


def _scan_train(class_dir: Path, on_problem: ProblemHandler) -> list[ImageRecord]:
    train_dir = class_dir / "train"
    good_dir = train_dir / GOOD
    for entry in list_entries(train_dir, on_problem) if train_dir.is_dir() else []:
        if entry != good_dir:
            on_problem(DataError(f"{entry}: unexpected entry (only train/{GOOD}/ is read)"))
    images = list_images(good_dir, on_problem) if good_dir.is_dir() else []
    if not images:
        on_problem(DataError(f"{good_dir}: empty class '{class_dir.name}' (no training images)"))
    return [ImageRecord(path, class_dir.name, NORMAL) for path in images]


def _scan_test(class_dir: Path, on_problem: ProblemHandler) -> list[ImageRecord]:
    test_dir = class_dir / "test"
    if not test_dir.is_dir():
        on_problem(DataError(f"{test_dir}: missing test folder of class '{class_dir.name}'"))
        return []
    records = []
    for type_dir in list_entries(test_dir, on_problem):
        if not type_dir.is_dir():
            problem = link_problem(type_dir) or "unexpected file in test/ (expected type folders)"
            on_problem(DataError(f"{type_dir}: {problem}"))
            continue
        images = list_images(type_dir, on_problem)
        defect = type_dir.name
        if defect == GOOD:
            records += [ImageRecord(path, class_dir.name, NORMAL) for path in images]
            continue
        masks = MaskIndex(class_dir / "ground_truth" / defect, MASK_SUFFIXES, on_problem)
        records += [
            ImageRecord(path, class_dir.name, ANOMALOUS, defect, masks.find(path, on_problem, True)) for path in images
        ]
    return records


def scan_mvtec(
    root: str | os.PathLike,
    classes: list[str] | str | None = None,
    on_problem: ProblemHandler = raise_problem,
) -> DatasetSplit:
    """List the dataset, sending each problem inside a class to `on_problem`.

    Problems that leave nothing to list (root missing, no classes, unknown class requested)
    always raise DataError.
    """
    root = Path(root)
    names = select_classes(root, find_classes(root), classes)
    train: list[ImageRecord] = []
    test: dict[str, list[ImageRecord]] = {}
    for name in names:
        train += _scan_train(root / name, on_problem)
        test[name] = _scan_test(root / name, on_problem)
    return DatasetSplit(root=root, class_names=names, train=train, test=test)


def discover_mvtec(root: str | os.PathLike, classes: list[str] | str | None = None) -> DatasetSplit:
    """List an MVTec AD style dataset; DataError at the first problem.

    `classes` selects a subset (in the order given; one name may be passed as a str); by
    default every class found is used.
    The split's `train` is the union of all selected classes' training images.
    """
    return scan_mvtec(root, classes, raise_problem)
