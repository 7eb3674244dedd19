"""Hostile and broken inputs: each either loads as documented or fails as one clean DataError.

Cases covered elsewhere are named, not repeated: a zero-byte `.jpg` through `load_image` and
a half PNG (tests/test_data_bad_input.py), a text file named `.png` (same file), 16-bit grey
scaled by its range, CMYK JPEGs, orientation 6 (tests/test_data_loading.py).
"""

from __future__ import annotations

import io
import os
import re
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageFile

from rlr.data import check_dataset, discover_mvtec, format_check_report, image_size, load_image, load_mask
from rlr.data.transforms import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, read_image, read_mask
from rlr.errors import ConfigError, DataError
from tests.hostile import no_hang as _no_hang
from tests.hostile import one_line as _is_clean

# Pillow warns about, then skips, broken metadata (EXIF, TIFF tags) in a file it can still read.
_PILLOW_NOTES = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


def _save(path: Path, image: Image.Image, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _encoded(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def _noise(size: tuple[int, int] = (16, 12)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _tree(root: Path, size: tuple[int, int] = (8, 6)) -> Path:
    """A valid MVTec-style tree: class 'nut', one image per folder, one mask."""
    for folder in ("train/good", "test/good", "test/hole"):
        _save(root / "nut" / folder / "000.png", Image.new("RGB", size))
    _save(root / "nut" / "ground_truth" / "hole" / "000_mask.png", Image.new("L", size, 255))
    return root


def _raises(path: Path, problem: str) -> pytest.RaisesExc:
    pattern = rf"^{re.escape(str(path))}: .*{re.escape(problem)}[^\n]*$"
    return pytest.raises(DataError, match=pattern)


# --- zero-byte and truncated files -------------------------------------------------------------


@pytest.mark.parametrize("read", [lambda p: load_mask(p, 8), image_size, read_image], ids=["mask", "size", "read"])
def test_zero_byte_file_through_every_reader(tmp_path: Path, read: Callable) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    with _raises(empty, "empty file (0 bytes)"):
        read(empty)


@pytest.mark.parametrize("cut", [10, 0.5, -1], ids=["10B", "half", "no-EOI"])
def test_truncated_jpeg(tmp_path: Path, cut: float) -> None:
    # Even the missing 2-byte end marker is refused: Pillow reports the file as truncated.
    data = _encoded(_noise((32, 32)), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with _raises(path, "truncated or corrupt image"):
        load_image(path, 8)


def test_truncated_png_header_and_missing_end_chunk(tmp_path: Path) -> None:
    data = _encoded(_noise(), "PNG")
    header_only = tmp_path / "head.png"
    header_only.write_bytes(data[:20])
    with _raises(header_only, "truncated or corrupt image"):
        load_image(header_only, 8)
    no_end = tmp_path / "no_end.png"
    no_end.write_bytes(data[:-12])  # only the IEND chunk is gone: every pixel is there
    assert torch.equal(load_image(no_end, 8), load_image(_save(tmp_path / "full.png", _noise()), 8))


# --- wrong extensions: the content decides the format ------------------------------------------


@pytest.mark.parametrize("format, named", [("JPEG", "photo.png"), ("PNG", "scan.jpg")])
def test_image_with_the_wrong_extension_loads_by_content(tmp_path: Path, format: str, named: str) -> None:
    data = _encoded(_noise(), format)
    honest = tmp_path / f"honest.{format.lower()}"
    honest.write_bytes(data)
    misnamed = tmp_path / named
    misnamed.write_bytes(data)
    assert torch.equal(load_image(misnamed, 8), load_image(honest, 8))
    assert image_size(misnamed) == (16, 12)


@pytest.mark.parametrize("content", [b"%PDF-1.4\n", b"PK\x03\x04" + bytes(26), b"<html></html>", b"\x00" * 64])
def test_non_image_content_with_an_image_extension(tmp_path: Path, content: bytes) -> None:
    # Plain text named .png: test_data_bad_input.py::test_text_file_with_image_extension
    fake = tmp_path / "fake.png"
    fake.write_bytes(content)
    with _raises(fake, "not an image file"):
        load_image(fake, 8)


# --- huge dimensions: a decompression bomb is refused from the header ---------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 grey PNG whose header claims width x height (CRC recomputed): ~70 bytes."""
    data = bytearray(_encoded(Image.new("L", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every pixel decode, to show a refusal comes before any memory is allocated."""
    decoded: list[str] = []
    load = ImageFile.ImageFile.load

    def recording(self: ImageFile.ImageFile) -> object:
        decoded.append(str(self.size))
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return decoded


@pytest.mark.parametrize(
    "width, height, reason",
    [
        (100_000, 100_000, "DecompressionBombError"),  # beyond Pillow's own hard limit
        (10_000, 10_000, f"100000000 pixels > {MAX_IMAGE_PIXELS}"),  # beyond ours only
    ],
)
def test_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, no_decoding: list[str], width: int, height: int, reason: str
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(width, height))
    with _raises(bomb, f"image too large ({reason}"):
        load_image(bomb, 8)
    with _raises(bomb, "image too large"):
        load_mask(bomb, 8)
    assert no_decoding == []
    load_image(_save(tmp_path / "small.png", Image.new("L", (2, 2))), 8)
    assert no_decoding  # the recorder does see real decodes


def test_decompression_bomb_is_a_problem_in_the_check(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    bomb = root / "nut" / "test" / "good" / "000.png"
    bomb.write_bytes(_png_claiming(100_000, 100_000))
    problems = check_dataset(root, workers=1).problems
    assert len(problems) == 1 and problems[0].startswith(f"{bomb}: image too large")


def test_pixel_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fits = _save(tmp_path / "fits.png", Image.new("L", (10, 10)))
    tall = _save(tmp_path / "tall.png", Image.new("L", (10, 11)))
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    assert load_image(fits, 4).shape == (3, 4, 4)
    with _raises(tall, "image too large (110 pixels > 100)"):
        load_image(tall, 4)
    with _raises(tall, "image too large (110 pixels > 100)"):
        load_mask(tall, 4)
    assert load_image(tall, 4, max_pixels=110).shape == (3, 4, 4)  # the argument wins
    problems = check_dataset(_tree(tmp_path / "data", size=(10, 11))).problems
    assert len(problems) == 4 and all("(110 pixels > 100)" in p for p in problems)


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1e6", "²"])
def test_bad_pixel_limit_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(MAX_PIXELS_ENV, value)
    with pytest.raises(ConfigError, match=rf"^{MAX_PIXELS_ENV}="):
        load_image(_save(tmp_path / "a.png", Image.new("L", (2, 2))), 2)


# --- tiny, deep and CMYK images ----------------------------------------------------------------


@pytest.mark.parametrize("mode, value", [("L", 51), ("RGB", (51, 51, 51)), ("I;16", 13107)])
def test_1x1_image_is_resized_up(tmp_path: Path, mode: str, value: object) -> None:
    dot = _save(tmp_path / "dot.png", Image.new(mode, (1, 1), value))
    assert torch.allclose(load_image(dot, 16), torch.full((3, 16, 16), 0.2))


def test_1x1_dataset_checks_clean(tmp_path: Path) -> None:
    root = _tree(tmp_path, size=(1, 1))
    mask = root / "nut" / "ground_truth" / "hole" / "000_mask.png"
    assert torch.equal(load_mask(mask, 16, expected_size=(1, 1)), torch.ones(1, 16, 16))
    assert check_dataset(root).problems == []


def _png_rgb16(pixel: tuple[int, int, int], size: int = 4) -> bytes:
    """A 48-bit RGB PNG (16 bits per channel), which Pillow cannot write."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + checksum

    row = b"\x00" + np.full((size, 3), pixel, dtype=">u2").tobytes()
    header = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b"")
    )


def test_16_bit_rgb_png_keeps_its_range(tmp_path: Path) -> None:
    # Pillow reads 16-bit colour as 8-bit RGB (high byte): the range survives, the low bits go.
    path = tmp_path / "deep.png"
    path.write_bytes(_png_rgb16((65535, 0, 32768)))
    pixel = load_image(path, 2)[:, 0, 0]
    assert torch.allclose(pixel, torch.tensor([1.0, 0.0, 0.5]), atol=0.01)


@pytest.mark.parametrize(
    "cmyk, rgb",
    [((0, 0, 0, 0), (1, 1, 1)), ((0, 0, 0, 255), (0, 0, 0)), ((255, 0, 0, 0), (0, 1, 1))],
    ids=["white", "black", "cyan"],
)
@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_colours(tmp_path: Path, cmyk: tuple, rgb: tuple, suffix: str) -> None:
    path = _save(tmp_path / f"ink{suffix}", Image.new("CMYK", (8, 8), cmyk))
    expected = torch.tensor(rgb, dtype=torch.float32)
    assert torch.allclose(load_image(path, 2)[:, 0, 0], expected, atol=0.02)


# --- EXIF orientation: every tag shows the image upright ---------------------------------------

# The transpose that, applied to the upright image, gives what a camera stores for each tag.
_STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(_STORED_AS))
def test_every_exif_orientation_is_shown_upright(tmp_path: Path, orientation: int) -> None:
    upright = np.zeros((24, 40), dtype=np.uint8)
    upright[:12, :10] = 255  # a white block in the top-left corner only
    stored = Image.fromarray(upright)
    if _STORED_AS[orientation] is not None:
        stored = stored.transpose(_STORED_AS[orientation])
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = _save(tmp_path / "shot.jpg", stored, exif=exif, quality=95)
    assert image_size(path) == (40, 24)
    shown = np.asarray(read_image(path), dtype=np.float32) / 255
    assert np.abs(shown - upright / 255).mean() < 0.02


@_PILLOW_NOTES
@pytest.mark.parametrize("orientation", [0, 9, 255])
def test_invalid_or_corrupt_exif_is_ignored(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = _save(tmp_path / "odd.jpg", Image.new("RGB", (8, 4)), exif=exif)
    assert image_size(path) == (8, 4) and read_image(path).size == (8, 4)
    data = _encoded(Image.new("RGB", (8, 4)), "JPEG")
    garbage = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(10)
    segment = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    broken = tmp_path / "broken_exif.jpg"
    broken.write_bytes(data[:2] + segment + data[2:])
    assert image_size(broken) == (8, 4) and load_image(broken, 4).shape == (3, 4, 4)


# --- masks that are not 0/255 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, value",
    [("L", 1), ("L", 254), ("I;16", 1), ("I;16", 256), ("I;16", 65535), ("RGB", (0, 0, 1))],
    ids=["L-1", "L-254", "16bit-1", "16bit-256", "16bit-max", "RGB-blue-1"],
)
def test_any_nonzero_mask_value_is_a_defect(tmp_path: Path, mode: str, value: object) -> None:
    # Binarised at > 0 in every channel; 256 in a 16-bit mask has a zero low byte, which an
    # 8-bit conversion would lose. (1, 128, 255 in 8 bits: tests/test_data_loading.py.)
    if mode == "I;16":  # Image.paste cuts 16-bit values to 8 bits; numpy keeps them
        array = np.zeros((4, 4), dtype=np.uint16)
        array[:, :2] = value
        image = Image.fromarray(array)
    else:
        image = Image.new(mode, (4, 4))
        image.paste(value, (0, 0, 2, 4))  # left half
    path = _save(tmp_path / "mask.png", image)
    assert Image.open(path).mode == mode  # the file really holds this mode
    mask = load_mask(path, 4)
    expected = torch.zeros(1, 4, 4)
    expected[..., :2] = 1.0
    assert torch.equal(mask, expected)


def test_mask_alpha_is_ignored(tmp_path: Path) -> None:
    opaque_black = _save(tmp_path / "a.png", Image.new("LA", (4, 4), (0, 255)))
    clear_white = _save(tmp_path / "b.png", Image.new("RGBA", (4, 4), (255, 255, 255, 0)))
    assert load_mask(opaque_black, 4).sum() == 0 and load_mask(clear_white, 4).sum() == 16


# --- symbolic link loops and special files -----------------------------------------------------


def test_folder_link_pointing_up_is_not_followed(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    loop = root / "nut" / "train" / "good" / "loop"
    loop.symlink_to("..", target_is_directory=True)
    with _no_hang(), _raises(loop, "unexpected folder inside an image folder"):
        discover_mvtec(root)
    with _no_hang():
        problems = check_dataset(root, workers=1).problems
    assert problems == [f"{loop}: unexpected folder inside an image folder"]


def test_file_link_to_itself(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    image = root / "nut" / "test" / "good" / "self.png"
    image.symlink_to("self.png")
    mutual = root / "nut" / "test" / "hole" / "a.png"
    mutual.symlink_to("b.png")
    (root / "nut" / "test" / "hole" / "b.png").symlink_to("a.png")
    in_test = root / "nut" / "test" / "chip"
    in_test.symlink_to("chip")
    with _no_hang(), _raises(in_test, "symbolic link loop"):  # test/chip is listed first
        discover_mvtec(root)
    with _raises(image, "symbolic link loop"):
        load_image(image, 8)
    with _no_hang():
        report = check_dataset(root, workers=1)
    for path in (image, mutual, in_test):
        assert f"{path}: symbolic link loop (the link leads back to itself)" in report.problems
    assert all(_is_clean(problem, root) for problem in report.problems)


def test_dangling_link(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    dangling = root / "nut" / "train" / "good" / "001.png"
    dangling.symlink_to(tmp_path / "gone.png")
    with _raises(dangling, "broken symbolic link (its target does not exist)"):
        discover_mvtec(root)
    with _raises(dangling, "file not found"):
        load_image(dangling, 8)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    # Opening a pipe for reading waits for a writer forever; it is refused before opening.
    root = _tree(tmp_path)
    pipe = root / "nut" / "train" / "good" / "001.png"
    os.mkfifo(pipe)
    with _no_hang(10), _raises(pipe, "not a regular file"):
        load_image(pipe, 8)
    with _no_hang(10):
        assert check_dataset(root, workers=1).problems == [f"{pipe}: not a regular file (a pipe, socket or device)"]


def test_link_to_an_endless_device_is_refused(tmp_path: Path) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero on this system")
    endless = tmp_path / "zero.png"
    endless.symlink_to("/dev/zero")
    with _no_hang(10), _raises(endless, "not a regular file"):
        load_image(endless, 8)


# --- file names that are not UTF-8 -------------------------------------------------------------


@pytest.mark.skipif(
    sys.platform != "linux" or sys.getfilesystemencoding() != "utf-8",
    reason="needs a file system that stores names as raw bytes",
)
def test_non_utf8_file_names(tmp_path: Path) -> None:
    # os.fsdecode keeps undecodable bytes as lone surrogates ("\udcff"): such names open fine,
    # and messages print with errors="backslashreplace" (a strict UTF-8 encode would fail).
    root = _tree(tmp_path)
    good = _save(root / "nut" / "train" / "good" / os.fsdecode(b"caf\xe9.png"), _noise((8, 6)))
    defect = _save(root / "nut" / "test" / "hole" / os.fsdecode(b"\xff.png"), _noise((8, 6)))
    mask = root / "nut" / "ground_truth" / "hole" / os.fsdecode(b"\xff_mask.png")
    _save(mask, Image.new("L", (8, 6)))
    broken = root / "nut" / "test" / "good" / os.fsdecode(b"bad\xfe.png")
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")

    assert load_image(good, 8).shape == (3, 8, 8)
    records = discover_mvtec(root).test["nut"]
    assert {r.image_path.name: r.mask_path.name for r in records if r.mask_path} == {
        "000.png": "000_mask.png",
        defect.name: mask.name,
    }
    with pytest.raises(DataError) as caught:
        load_image(broken, 8)
    assert _is_clean(str(caught.value), broken)
    report = check_dataset(root, workers=1)
    assert len(report.problems) == 1 and _is_clean(report.problems[0], broken)
    text = format_check_report(report).encode("utf-8", "backslashreplace").decode("utf-8")
    assert "bad\\udcfe.png: truncated or corrupt image" in text


# --- random bytes as image files ---------------------------------------------------------------

_SIGNATURES = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"GIF89a",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
]
_ROTATED = Image.Exif()
_ROTATED[ExifTags.Base.Orientation] = 6
_VALID = [
    _encoded(_noise(), "PNG"),
    _encoded(_noise(), "JPEG"),
    _encoded(_noise().convert("L"), "TIFF"),
    _encoded(_noise(), "BMP"),
    _encoded(_noise().convert("P"), "GIF"),
    _encoded(_noise(), "WEBP"),
    _encoded(_noise().convert("CMYK"), "JPEG", exif=_ROTATED),
]


def _mutated(data: bytes, edits: list[tuple[int, int]], keep: float) -> bytes:
    """A valid file with some bytes overwritten and its tail cut: reaches deep into decoders."""
    corrupt = bytearray(data)
    for position, value in edits:
        corrupt[position % len(corrupt)] = value
    return bytes(corrupt[: max(1, int(len(corrupt) * keep))])


_CONTENTS = st.one_of(
    st.binary(max_size=2048),
    st.builds(bytes.__add__, st.sampled_from(_SIGNATURES), st.binary(max_size=2048)),
    st.builds(
        _mutated,
        st.sampled_from(_VALID),
        st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=8),
        st.floats(0.0, 1.0),
    ),
)
# Headers that claim a few thousand pixels a side would make each example allocate and decode
# for a while; a low limit keeps the run quick (the default limit is tested above).
_SMALL_LIMIT = {MAX_PIXELS_ENV: "250000"}
_FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_PILLOW_NOTES
@_FUZZ
@given(content=_CONTENTS, suffix=st.sampled_from([".png", ".jpg"]))
def test_random_bytes_load_or_fail_cleanly(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, _SMALL_LIMIT):
        path = Path(folder) / f"fuzz{suffix}"
        path.write_bytes(content)
        for read in (load_image, load_mask, lambda p, _: image_size(p)):
            try:
                read(path, 8)
            except DataError as error:
                assert _is_clean(str(error), path), str(error)


@_PILLOW_NOTES
@settings(_FUZZ, max_examples=30)
@given(content=_CONTENTS, suffix=st.sampled_from([".png", ".jpg"]))
def test_random_bytes_in_a_dataset_are_reported_cleanly(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, _SMALL_LIMIT):
        root = _tree(Path(folder))
        image = root / "nut" / "train" / "good" / f"fuzz{suffix}"
        mask = root / "nut" / "ground_truth" / "hole" / f"000_mask{suffix}"
        (root / "nut" / "ground_truth" / "hole" / "000_mask.png").unlink()
        for path in (image, mask):
            path.write_bytes(content)
        report = check_dataset(root, workers=1)
        assert all(_is_clean(problem, root) for problem in report.problems), report.problems
        for path, read in ((image, read_image), (mask, read_mask)):
            try:
                read(path)
            except DataError as error:  # every file that fails to decode is in the report
                assert str(error) in report.problems
        format_check_report(report).encode("utf-8", "backslashreplace")
