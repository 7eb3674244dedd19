"""Hostile inputs, round two (issue 16), in the data loaders: pipes, GIFs, fuzzed PNG headers.

Every test runs under a time limit (tests/hostile.py): a pipe that is opened blocks forever.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rlr.cli import main
from rlr.data import ImageDataset, check_dataset, discover_folder, discover_mvtec, load_image, load_mask
from rlr.data.split import IMAGE_EXTENSIONS
from rlr.errors import DataError
from tests.hostile import one_line, time_limit  # noqa: F401  (time_limit: autouse)

README = Path(__file__).resolve().parents[1] / "README.md"
pipes = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")


def _tree(root: Path) -> Path:
    """One class 'nut': two train images, one good and one defect test image with its mask."""
    rng = np.random.default_rng(0)
    for folder, count in (("train/good", 2), ("test/good", 1), ("test/hole", 1)):
        (root / "nut" / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "nut" / folder / f"{i}.png")
    (root / "nut/ground_truth/hole").mkdir(parents=True)
    Image.new("L", (32, 32), 255).save(root / "nut/ground_truth/hole/0_mask.png")
    return root


@pipes
@pytest.mark.parametrize("folder", ["train/good", "test/good"])
def test_a_pipe_named_png_is_refused_when_listing(tmp_path: Path, folder: str) -> None:
    root = _tree(tmp_path)
    pipe = root / "nut" / folder / "9.png"
    os.mkfifo(pipe)
    with pytest.raises(DataError, match=rf"^{re.escape(str(pipe))}: not a regular file \(a pipe, socket or device\)$"):
        discover_mvtec(root)
    assert check_dataset(root, workers=1).problems == [f"{pipe}: not a regular file (a pipe, socket or device)"]


@pipes
def test_a_pipe_stops_rlr_train_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _tree(tmp_path / "data")
    pipe = root / "nut" / "train" / "good" / "9.png"
    os.mkfifo(pipe)
    run_dir = tmp_path / "run"
    assert main(["train", "--data.root", str(root), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == f"rlr: error: {pipe}: not a regular file (a pipe, socket or device)\n"
    assert not run_dir.exists()


@pipes
def test_a_pipe_in_a_plain_folder_is_refused(tmp_path: Path) -> None:
    good = _tree(tmp_path) / "nut" / "train" / "good"
    os.mkfifo(good / "9.png")
    with pytest.raises(DataError, match="9.png: not a regular file"):
        discover_folder(good)


def test_gif_and_other_palette_images_are_read(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P").save(root / "nut/train/good/2.gif")
    Image.fromarray(rgb).convert("P").save(root / "nut/test/hole/1.gif")
    Image.new("RGB", (32, 32), "white").convert("P").save(root / "nut/ground_truth/hole/1_mask.gif")
    split = discover_mvtec(root)
    assert root / "nut/train/good/2.gif" in [r.image_path for r in split.train]
    assert ImageDataset(split.train, 16)[2]["image"].shape == (3, 16, 16)
    assert load_mask(root / "nut/ground_truth/hole/1_mask.gif", 8).sum() == 64  # judged by its colour
    assert check_dataset(root, workers=1).problems == []


def test_readme_names_exactly_the_extensions_read() -> None:
    text = README.read_text(encoding="utf-8")
    (line,) = [row for row in text.splitlines() if row.startswith("| file extensions read")]
    assert sorted(re.findall(r"`(\.[a-z]+)`", line)) == sorted(IMAGE_EXTENSIONS)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, depth: int, colour: int, interlace: int, extra: bytes, data: bytes) -> bytes:
    """A PNG with a CRC-correct header of any field values, an optional chunk and random pixel data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    chunks = _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", zlib.compress(data))
    return b"\x89PNG\r\n\x1a\n" + chunks + _chunk(b"IEND", b"")


_EXTRA = st.one_of(
    st.just(b""),
    st.builds(_chunk, st.sampled_from([b"PLTE", b"tRNS", b"eXIf", b"iCCP", b"sBIT", b"gAMA"]), st.binary(max_size=64)),
)
_HEADERS = st.builds(
    _png,
    st.integers(0, 600),
    st.integers(0, 600),
    st.sampled_from([0, 1, 2, 4, 8, 16, 3, 255]),
    st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
    st.integers(0, 2),
    _EXTRA,
    st.binary(max_size=4096),
)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning:PIL")
@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=_HEADERS)
def test_random_png_headers_load_or_fail_in_one_line(content: bytes) -> None:
    # A PNG-shaped file with random header fields reaches further into the decoder than random bytes.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.png"
        path.write_bytes(content)
        for read in (load_image, load_mask):
            try:
                out = read(path, 8)
            except DataError as error:
                assert one_line(str(error), path), str(error)
            else:
                assert out.shape[-2:] == (8, 8) and bool(((out >= 0) & (out <= 1)).all())
