"""Which image files a list of files, folders and glob patterns names (predict, calibrate)."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from rlr.data.split import is_ignored, is_image_file

_GLOB_CHARS = frozenset("*?[")


def images_under(folder: Path) -> list[Path]:
    """Image files below `folder`, recursively and sorted; hidden files and folders are skipped."""
    found = (p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
    return sorted(p for p in found if not any(is_ignored(Path(part)) for part in p.relative_to(folder).parts))


def collect_inputs(items: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursively) and glob patterns into image files, and list what was not found.

    A file named explicitly is always tried; inside folders and glob matches only files with an
    image extension are taken (so a stray notes.txt in a folder is not an error).
    """
    files: list[Path] = []
    problems: list[str] = []
    for item in items:
        text = str(item)
        if _GLOB_CHARS & set(text) and not Path(text).exists():
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            found = [f for m in matches for f in (images_under(m) if m.is_dir() else [m] if is_image_file(m) else [])]
            if not found:
                problems.append(f"{text}: no image file matches")
        elif Path(text).is_dir():
            found = images_under(Path(text))
            if not found:
                problems.append(f"{text}: no image files found in this folder")
        elif Path(text).exists():
            found = [Path(text)]
        else:
            found = []
            problems.append(f"{text}: file not found")
        files.extend(found)
    return list(dict.fromkeys(files)), problems
