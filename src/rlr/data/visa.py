"""Discover the raw VisA release (Zou et al., ECCV 2022) on disk (listing only; nothing is decoded).

VisA's split lives in a file, not in folders: `<root>/split_csv/1cls.csv` has the header
`object,split,label,image,mask` and one row per image (paths relative to root): `train` rows
are normal training images, `test` rows normal or anomalous test images, each anomaly with
its mask (`<class>/Data/Masks/Anomaly/*.png`, defect pixels non-zero). The file names no
defect kinds, so every anomaly has the type `bad`, as in the MVTec-converted layout (which
`rlr.data.mvtec` reads).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TextIO

from rlr.data.split import (
    IMAGE_EXTENSIONS,
    DatasetSplit,
    ProblemHandler,
    is_image_file,
    link_problem,
    raise_problem,
    select_classes,
)
from rlr.data.transforms import NOT_REGULAR
from rlr.data.types import ANOMALOUS, NORMAL, ImageRecord
from rlr.errors import DataError

VISA_CLASSES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
SPLIT_CSV = Path("split_csv", "1cls.csv")
# where the release keeps a class's files (the csv is what is read; `rlr data check` uses these)
DATA_FOLDERS = (Path("Data/Images/Normal"), Path("Data/Images/Anomaly"), Path("Data/Masks/Anomaly"))
HEADER = ["object", "split", "label", "image", "mask"]
TRAIN, TEST = "train", "test"
NORMAL_LABEL, ANOMALY_LABEL = "normal", "anomaly"
DEFECT = "bad"

_Row = tuple[int, list[str]]  # (line number in the csv, its fields)


def is_visa(root: str | os.PathLike) -> bool:
    """Whether `root` looks like the raw VisA release: it holds the split csv."""
    return (Path(root) / SPLIT_CSV).exists()


def _read_rows(csv_path: Path) -> list[_Row]:
    """The csv's non-blank data rows; DataError when it cannot be read or its header is wrong."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:
            return _parse(csv_path, file)
    except FileNotFoundError:
        raise DataError(
            f"{csv_path}: split file not found (the raw VisA release has it; "
            "for the MVTec-converted layout use data.format mvtec)"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{csv_path}: not a file") from None
    except PermissionError:
        raise DataError(f"{csv_path}: cannot read file (permission denied)") from None
    except UnicodeDecodeError:
        raise DataError(f"{csv_path}: not a UTF-8 text file") from None


def _parse(csv_path: Path, file: TextIO) -> list[_Row]:
    """The rows below a checked header, each with its line number for error messages."""
    expected = ",".join(HEADER)
    reader = csv.reader(file)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{csv_path}: empty file (expected the header {expected})")
        if header != HEADER:
            found = ",".join(header)
            raise DataError(f"{csv_path}:1: unexpected header {found!r} (expected {expected!r})")
        return [(reader.line_num, row) for row in reader if row]
    except csv.Error as error:
        raise DataError(f"{csv_path}:{reader.line_num}: malformed csv ({error})") from None


def _row_problem(row: list[str]) -> str | None:
    """What is wrong with a row's fields, before any file is looked at."""
    if len(row) != len(HEADER):
        return f"{len(row)} fields, expected {len(HEADER)} ({','.join(HEADER)})"
    name, split, label, image, mask = row
    if not name:
        return "no class name in the object column"
    if split not in (TRAIN, TEST):
        return f"unknown split {split!r} (expected {TRAIN} or {TEST})"
    if label not in (NORMAL_LABEL, ANOMALY_LABEL):
        return f"unknown label {label!r} (expected {NORMAL_LABEL} or {ANOMALY_LABEL})"
    if split == TRAIN and label == ANOMALY_LABEL:
        return "anomaly in the train split (training uses normal images only)"
    if not image:
        return "no image path"
    if label == ANOMALY_LABEL and not mask:
        return "anomaly without a mask path"
    if label == NORMAL_LABEL and mask:
        return "mask path given for a normal image"
    return None


def _listed_file(root: Path, relative: str, where: str, on_problem: ProblemHandler) -> Path | None:
    """`root / relative` when it is an image file; otherwise the problem, naming the csv line."""
    path = root / relative
    if not (problem := link_problem(path)):
        if not path.exists():
            problem = "file not found"
        elif not path.is_file():
            problem = "is a folder, not an image file" if path.is_dir() else NOT_REGULAR
        elif not is_image_file(path):
            expected = ", ".join(sorted(IMAGE_EXTENSIONS))
            problem = f"not an image file (extension not one of {expected})"
        else:
            return path
    on_problem(DataError(f"{path}: {problem} (listed at {where})"))
    return None


def _scan_class(
    root: Path, csv_path: Path, name: str, rows: list[_Row], on_problem: ProblemHandler
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """One class's training and test records from its csv rows."""
    train: list[ImageRecord] = []
    test: list[ImageRecord] = []
    first_line: dict[Path, int] = {}
    for line, (_, split, label, image, mask) in rows:
        where = f"{csv_path}:{line}"
        image_path = _listed_file(root, image, where, on_problem)
        if image_path is None:
            continue
        if (first := first_line.setdefault(image_path, line)) != line:
            on_problem(DataError(f"{image_path}: listed twice ({csv_path}:{first} and :{line})"))
            continue
        if label == NORMAL_LABEL:
            (train if split == TRAIN else test).append(ImageRecord(image_path, name, NORMAL))
        else:
            mask_path = _listed_file(root, mask, where, on_problem)
            test.append(ImageRecord(image_path, name, ANOMALOUS, DEFECT, mask_path))
    if not train:
        on_problem(DataError(f"{csv_path}: empty class '{name}' (no {TRAIN} rows)"))
    if not test:
        on_problem(DataError(f"{csv_path}: class '{name}' has no {TEST} rows"))
    return train, test


def discover_visa(
    root: str | os.PathLike,
    classes: list[str] | str | None = None,
    on_problem: ProblemHandler = raise_problem,
) -> DatasetSplit:
    """List the raw VisA release from its split csv, sending each problem to `on_problem`.

    The classes are those the csv names, sorted (a folder it does not name is not a class);
    `classes` selects some of them, in the order given. Problems that leave nothing to list (root
    or csv missing or unreadable, a wrong header, an unknown class requested) always raise.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset root not found")
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is not a folder")
    csv_path = root / SPLIT_CSV
    rows_by_class: dict[str, list[_Row]] = {}
    for line, row in _read_rows(csv_path):
        if problem := _row_problem(row):
            on_problem(DataError(f"{csv_path}:{line}: {problem}"))
        else:
            rows_by_class.setdefault(row[0], []).append((line, row))
    if not rows_by_class:
        raise DataError(f"{csv_path}: no usable rows (the split lists no images)")
    names = select_classes(csv_path, sorted(rows_by_class), classes)
    train: list[ImageRecord] = []
    test: dict[str, list[ImageRecord]] = {}
    for name in names:
        if not (root / name).is_dir():
            on_problem(DataError(f"{root / name}: class folder not found (listed in {csv_path})"))
            test[name] = []
            continue
        class_train, test[name] = _scan_class(root, csv_path, name, rows_by_class[name], on_problem)
        train += class_train
    return DatasetSplit(root=root, class_names=names, train=train, test=test)
