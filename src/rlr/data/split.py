"""What discovering a dataset on disk yields, and the listing rules every layout shares.

Listing is cheap (no decoding) and strict: a file in an image folder that is not an image is a
problem, never silently skipped. Each problem goes to an `on_problem` handler, so the same walk
can stop at the first problem (`raise_problem`, for training) or collect them all (`rlr data
check`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlr.data.transforms import NOT_REGULAR
from rlr.data.types import ImageRecord
from rlr.errors import DataError

# Every extension read as an image (README lists them); the content, not the name, decides the format.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_OS_METADATA = frozenset({"thumbs.db", "desktop.ini"})  # written by file browsers, not by users

ProblemHandler = Callable[[DataError], None]


def raise_problem(problem: DataError) -> None:
    """The default handler: stop at the first problem."""
    raise problem


@dataclass
class DatasetSplit:
    """A dataset's unified training set (all classes together) and one test set per class."""

    root: Path
    class_names: list[str]
    train: list[ImageRecord]
    test: dict[str, list[ImageRecord]]


def select_classes(source: Path, available: list[str], classes: list[str] | str | None) -> list[str]:
    """The requested classes in the order given (all `available` for None); DataError naming
    `source` (where the classes were found) for an unknown one, since guessing would train on
    the wrong data.
    """
    if classes is None:
        return available
    requested = list(dict.fromkeys([classes] if isinstance(classes, str) else classes))
    if not requested:
        raise DataError(f"{source}: no classes requested")
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise DataError(f"{source}: unknown class(es) {', '.join(unknown)}; available: {', '.join(available)}")
    return requested


def is_ignored(path: Path) -> bool:
    """Hidden files and folders, and file-browser metadata, are not part of a dataset."""
    return path.name.startswith(".") or path.name.lower() in _OS_METADATA


def is_image_file(path: Path) -> bool:
    """Whether the extension is one of IMAGE_EXTENSIONS (any letter case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def link_problem(path: Path) -> str | None:
    """Why `path`, a symbolic link, cannot be followed (a loop, a missing target), else None.

    Such a link is neither a file nor a folder, so without this it would be misreported as one.
    """
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
        return "broken symbolic link (its target does not exist)"
    return None


def list_entries(folder: Path, on_problem: ProblemHandler = raise_problem) -> list[Path]:
    """The folder's entries, sorted, minus ignored ones; none if it cannot be listed."""
    try:
        return sorted(entry for entry in folder.iterdir() if not is_ignored(entry))
    except FileNotFoundError:
        on_problem(DataError(f"{folder}: folder not found"))
    except NotADirectoryError:
        on_problem(DataError(f"{folder}: not a folder"))
    except PermissionError:
        on_problem(DataError(f"{folder}: cannot list folder (permission denied)"))
    return []


def list_images(folder: Path, on_problem: ProblemHandler = raise_problem) -> list[Path]:
    """Sorted image files in `folder`; anything else in it is reported to `on_problem`."""
    images = []
    for entry in list_entries(folder, on_problem):
        if problem := link_problem(entry):
            on_problem(DataError(f"{entry}: {problem}"))
        elif entry.is_dir():
            on_problem(DataError(f"{entry}: unexpected folder inside an image folder"))
        elif not entry.is_file():  # hashing or decoding a pipe would wait for a writer forever
            on_problem(DataError(f"{entry}: {NOT_REGULAR}"))
        elif not is_image_file(entry):
            expected = ", ".join(sorted(IMAGE_EXTENSIONS))
            on_problem(DataError(f"{entry}: not an image file (extension not one of {expected})"))
        else:
            images.append(entry)
    return images


class MaskIndex:
    """Finds the mask of an image by stem among the images of one mask folder.

    A mask for image `<stem>.<ext>` is named `<stem><suffix>.<any image extension>` for one of
    `suffixes`; more than one match is a problem, since picking one would be a guess.
    """

    def __init__(self, folder: Path, suffixes: tuple[str, ...], on_problem: ProblemHandler = raise_problem) -> None:
        self.folder = folder
        self.suffixes = suffixes
        self._by_stem: dict[str, list[Path]] = {}
        for mask in list_images(folder, on_problem) if folder.is_dir() else []:
            self._by_stem.setdefault(mask.stem, []).append(mask)

    def find(self, image: Path, on_problem: ProblemHandler = raise_problem, required: bool = False) -> Path | None:
        """The mask of `image`, or None; several matches, or none where `required`, are reported."""
        matches = [m for s in self.suffixes for m in self._by_stem.get(image.stem + s, [])]
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches)
            on_problem(DataError(f"{image}: several masks match in {self.folder} ({names})"))
        elif not matches and required:
            expected = self.folder / f"{image.stem}{self.suffixes[0]}.png"
            on_problem(DataError(f"{image}: defect image without its mask (expected {expected})"))
        return matches[0] if len(matches) == 1 else None
