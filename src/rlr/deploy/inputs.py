"""Which image files a list of files, folders and glob patterns names (predict, calibrate).

Folders and `**` are walked by `_walk`, not by `glob` or `rglob`: links to folders are followed,
except one that leads back into a folder the walk is already inside (`sub/up -> ..`, `self -> .`),
which `glob` would follow until the path grew too long, listing the same images again on every
turn. The result names each real file once, in the order first seen.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterator, Sequence

from rlr.data.split import ProblemHandler, is_image_file, list_entries, raise_problem

_GLOB_CHARS = frozenset("*?[")


def _walk(top: Path, depth: int | None, on_problem: ProblemHandler) -> Iterator[Path]:
    """Every entry below `top` (hidden ones left out), at most `depth` levels down (None: all).

    A link to a folder the walk is already inside (its real path is `top` or a folder on the way
    down) is a loop: it is left out, as following it would only find the same entries again.
    `list_entries` reports a folder it cannot list.
    """
    stack = [(top, depth, frozenset({os.path.realpath(top)}))]
    while stack:
        folder, left, inside = stack.pop()
        for entry in list_entries(folder, on_problem):
            if not entry.is_dir():
                yield entry
                continue
            real = os.path.realpath(entry)
            if real in inside:
                continue
            yield entry
            if left is None or left > 1:
                stack.append((entry, None if left is None else left - 1, inside | {real}))


def images_under(folder: Path, on_problem: ProblemHandler = raise_problem) -> list[Path]:
    """Image files below `folder`, recursively and sorted; hidden files and folders are skipped."""
    return sorted(p for p in _walk(Path(folder), None, on_problem) if is_image_file(p) and p.is_file())


def _matches(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether path components match pattern components; a `**` component stands for any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatch(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _glob(pattern: str, on_problem: ProblemHandler) -> list[Path]:
    """Sorted paths matching `pattern` (glob's rules, `**` recursive; hidden names are not matched)."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if _GLOB_CHARS & set(part))
    anchor, wanted = Path(*parts[:fixed]), parts[fixed:]
    if not anchor.is_dir():
        return []
    depth = None if "**" in wanted else len(wanted)
    found = (entry for entry in _walk(anchor, depth, on_problem) if _matches(entry.relative_to(anchor).parts, wanted))
    return sorted(found, key=str)


def collect_inputs(items: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursively) and glob patterns into image files, and list what was not found.

    A file named explicitly is always tried; inside folders and glob matches only files with an
    image extension are taken (so a stray notes.txt in a folder is not an error). A file reached
    twice (named twice, through a link, by two patterns) is kept once, where it was first named.
    """
    files: list[Path] = []
    problems: list[str] = []

    def note(problem: Exception) -> None:
        problems.append(str(problem))

    for item in items:
        text = str(item)
        if _GLOB_CHARS & set(text) and not Path(text).exists():
            matches = _glob(text, note)
            found = [
                f for m in matches for f in (images_under(m, note) if m.is_dir() else [m] if is_image_file(m) else [])
            ]
            if not found:
                problems.append(f"{text}: no image file matches")
        elif Path(text).is_dir():
            found = images_under(Path(text), note)
            if not found:
                problems.append(f"{text}: no image files found in this folder")
        elif Path(text).exists():
            found = [Path(text)]
        else:
            found = []
            problems.append(f"{text}: file not found")
        files.extend(found)
    first_seen: dict[str, Path] = {}
    for path in files:
        first_seen.setdefault(os.path.realpath(path), path)
    return list(first_seen.values()), problems
