"""Turn image and mask files of any format into the tensors every dataset returns.

All decoding goes through `read_image`, so every file meets the same rules: the EXIF (or XMP)
orientation tag is applied (`ImageOps.exif_transpose`), so an image shot in portrait mode is
seen the way a viewer shows it; the file is decoded in full, so a truncated file fails here
rather than deep inside a data loader; and any failure is one `DataError` line that starts
with the path.

Size limit: an image larger than `MAX_IMAGE_PIXELS` (width * height, 8192 * 8192 by default)
is refused from its header alone, before any pixel is decoded, so a decompression bomb (a few
kilobytes that claim gigapixels) costs neither memory nor time. Set the environment variable
`RLR_MAX_IMAGE_PIXELS` to change the default, or pass `max_pixels`; Pillow's own hard limit
(`2 * PIL.Image.MAX_IMAGE_PIXELS`, about 179 M pixels) still applies above it.

Aspect ratio (`data.resize`, the same rule for images, masks and anomaly maps): `stretch`
resizes the whole image to the square, `letterbox` fits it inside the square and pads the rest
with black (0; masks with 0, normal), `center_crop` keeps the central square and resizes it.
`placement` is the one place that says where an image lands; the ONNX runner repeats it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from rlr.errors import ConfigError, DataError

#: Largest image (width * height) read by default; larger files are refused as a likely mistake
#: or decompression bomb. `RLR_MAX_IMAGE_PIXELS` or `max_pixels` overrides it.
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_PIXELS_ENV = "RLR_MAX_IMAGE_PIXELS"

_WARNINGS_LOCK = threading.Lock()
_INT32_MIN = float(np.iinfo(np.int32).min)
_INT32_SPAN = float(np.iinfo(np.int32).max) - _INT32_MIN
_UINT16_MAX = float(np.iinfo(np.uint16).max)
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
# Leading bytes of common formats: a file that starts like an image but that Pillow cannot
# identify has a broken header, which is worth telling apart from a file of another kind.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF8", b"II*\x00", b"MM\x00*")
#: Why a pipe, socket or device is refused before it is opened (opening a pipe blocks).
NOT_REGULAR = "not a regular file (a pipe, socket or device)"
#: `data.resize`: how an image of any shape becomes the model's square, each rule in words.
RESIZE_DESCRIPTIONS = {
    "stretch": "the whole image resized to the square, its aspect ratio ignored",
    "letterbox": "fitted inside the square, aspect ratio kept, the rest padded with black (masks and maps: 0)",
    "center_crop": "the image's central square, resized (the strips beside it are not scored)",
}
RESIZE_MODES = tuple(RESIZE_DESCRIPTIONS)
LETTERBOX_FILL = 0.0  # the letterbox's padding: black in images, normal (0) in masks and maps
#: Stretching that changes the aspect ratio by more than this many percent is warned about, once per run.
STRETCH_WARNING_PERCENT = 10


def _looks_like_image(head: bytes) -> bool:
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def max_image_pixels() -> int:
    """The default size limit: `$RLR_MAX_IMAGE_PIXELS` when set, else `MAX_IMAGE_PIXELS`.

    Read at each call, so a limit set after import (or by a test) takes effect.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    if not value.isdecimal() or int(value) == 0:
        raise ConfigError(f"{MAX_PIXELS_ENV}={value!r}: expected a positive whole number of pixels")
    return int(value)


def _open_file(path: Path) -> BinaryIO:
    """Open a regular file for reading; a FIFO would block forever and a device never end."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"{path}: is a folder, not an image file")
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: {NOT_REGULAR}")
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except PermissionError:
        raise DataError(f"{path}: cannot read file (permission denied)") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataError(f"{path}: symbolic link loop (the link leads back to itself)") from None
        raise DataError(f"{path}: cannot read file ({_one_line(error)})") from None


@contextmanager
def _opened(path: Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """Open `path` lazily (header only), turning every way this can fail into a DataError."""
    with _open_file(path) as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes)")
        try:
            # Our own limit below replaces Pillow's warning (its hard error still applies).
            # catch_warnings changes process-wide state, hence the lock; it only spans the
            # header parse, so parallel decoding is not held up.
            with _WARNINGS_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(handle)
        except UnidentifiedImageError:
            handle.seek(0)
            if _looks_like_image(handle.read(12)):
                raise DataError(f"{path}: truncated or corrupt image (unreadable header)") from None
            raise DataError(f"{path}: not an image file") from None
        except Image.DecompressionBombError as error:
            raise DataError(f"{path}: image too large ({_one_line(error)})") from None
        except Exception as error:  # a plugin failing on a malformed header
            raise DataError(f"{path}: truncated or corrupt image ({_one_line(error)})") from None
        with image:
            pixels = image.width * image.height
            if max_pixels is not None and pixels > max_pixels:
                raise DataError(f"{path}: image too large ({pixels} pixels > {max_pixels})")
            yield image


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Decode a whole image file, EXIF orientation applied, in its own PIL mode.

    `max_pixels` defaults to `max_image_pixels()`; the file's content decides its format, so a
    JPEG named `.png` loads as the JPEG it is.
    """
    path = Path(path)
    with _opened(path, max_image_pixels() if max_pixels is None else max_pixels) as image:
        try:
            image.load()
            return ImageOps.exif_transpose(image)
        except Exception as error:  # truncated data, bad CRC, broken EXIF: all mean "corrupt"
            raise DataError(f"{path}: truncated or corrupt image ({_one_line(error)})") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as `read_image` will see it (EXIF orientation applied), header only.

    A PNG's orientation is read only when its eXIf chunk precedes the pixel data (where the PNG
    specification puts it); reading a late chunk would need a full decode.
    """
    path = Path(path)
    with _opened(path, max_pixels=None) as image:
        width, height = image.size
        if image.format == "PNG" and "exif" not in image.info:
            return width, height
        try:
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        except Exception as error:
            raise DataError(f"{path}: corrupt EXIF data ({_one_line(error)})") from None
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def _without_alpha(image: Image.Image) -> Image.Image:
    """8-bit RGB; alpha is dropped (not composited), so stored colours are kept as they are."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's supported route for palette transparency
    return image.convert("RGB")


def to_tensor(image: Image.Image, path: str | os.PathLike) -> torch.Tensor:
    """Pixels as float32 (C, H, W) in [0, 1]: C = 1 for single-channel modes, else 3.

    8-bit modes (1, L, P, RGB, CMYK, YCbCr, ...) are divided by 255; alpha is dropped.
    16-bit modes (I;16*) are divided by 65535. Mode I (32-bit integer; Pillow also uses it for
    some 16-bit files) is divided by 65535 when its values fit in 16 bits, else the int32 range
    is mapped onto [0, 1]. Mode F (float) must already lie in [0, 1]: there is no range to infer.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        pixels = torch.from_numpy(np.asarray(image).astype(np.float32) / _UINT16_MAX)
    elif mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > _UINT16_MAX):
            pixels = torch.from_numpy(((values - _INT32_MIN) / _INT32_SPAN).astype(np.float32))
        else:
            pixels = torch.from_numpy(values.astype(np.float32) / _UINT16_MAX)
    elif mode == "F":
        pixels = torch.from_numpy(np.array(image, dtype=np.float32))
        if not torch.isfinite(pixels).all():
            raise DataError(f"{path}: float image holds NaN or infinite values")
        if pixels.numel() and (pixels.min() < 0 or pixels.max() > 1):
            raise DataError(
                f"{path}: float image values span [{pixels.min():g}, {pixels.max():g}], "
                "expected [0, 1]; rescale the file"
            )
    elif mode in ("1", "L"):
        pixels = torch.from_numpy(np.array(image.convert("L"))).float().div_(255)
    else:
        try:
            rgb = _without_alpha(image)
        except (ValueError, OSError) as error:
            raise DataError(f"{path}: unsupported image mode {mode} ({_one_line(error)})") from None
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div_(255)
    return pixels.unsqueeze(0)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")


def load_image(
    path: str | os.PathLike, size: int, max_pixels: int | None = None, mode: str = "stretch"
) -> torch.Tensor:
    """Read any image file as float32 (3, size, size) in [0, 1].

    Any PIL mode is accepted (see `to_tensor`; alpha is dropped, not composited; CMYK uses
    Pillow's plain conversion without ICC profiles); the EXIF orientation is applied; the image
    is resized bilinearly with antialiasing, its aspect ratio handled by `mode` (`data.resize`).
    """
    _check_size(size)
    return resize_image(to_tensor(read_image(path, max_pixels), path), size, mode)


@dataclass(frozen=True)
class Placement:
    """Where an image lands in the model's square: the box of the image that is used, and the box
    of the square it is resized into (both left, top, width, height, in pixels)."""

    source: tuple[int, int, int, int]
    target: tuple[int, int, int, int]


def placement(width: int, height: int, size: int, mode: str) -> Placement:
    """The `data.resize` rule for a (width, height) image and a size x size square."""
    if mode == "stretch":
        return Placement((0, 0, width, height), (0, 0, size, size))
    if mode == "letterbox":
        scale = size / max(width, height)
        fitted_width, fitted_height = max(1, round(width * scale)), max(1, round(height * scale))
        offset = ((size - fitted_width) // 2, (size - fitted_height) // 2)
        return Placement((0, 0, width, height), (*offset, fitted_width, fitted_height))
    if mode == "center_crop":
        side = min(width, height)
        return Placement(((width - side) // 2, (height - side) // 2, side, side), (0, 0, size, size))
    raise ConfigError(f"unknown data.resize '{mode}' (known: {', '.join(RESIZE_MODES)})")


def _place(
    pixels: torch.Tensor, size: int, mode: str, interpolate: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
) -> torch.Tensor:
    """(C, H, W) -> (C, size, size) by `placement`: crop, `interpolate` to the target box, pad with the fill."""
    height, width = pixels.shape[-2:]
    where = placement(int(width), int(height), size, mode)
    left, top, used_width, used_height = where.source
    pixels = pixels[:, top : top + used_height, left : left + used_width]
    into_left, into_top, into_width, into_height = where.target
    if (used_height, used_width) != (into_height, into_width):
        pixels = interpolate(pixels, (into_height, into_width))
    if (into_width, into_height) == (size, size):
        return pixels
    canvas = pixels.new_full((pixels.shape[0], size, size), LETTERBOX_FILL)
    canvas[:, into_top : into_top + into_height, into_left : into_left + into_width] = pixels
    return canvas


def _bilinear(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    resized = F.interpolate(pixels.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized[0].clamp_(0, 1)


def _nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(mask.unsqueeze(0), size=size, mode="nearest-exact")[0]


def resize_image(pixels: torch.Tensor, size: int, mode: str = "stretch") -> torch.Tensor:
    """(C, H, W) from `to_tensor` -> (3, size, size): bilinear with antialiasing, grey to RGB, placed by `mode`."""
    _check_size(size)
    return _place(pixels, size, mode, _bilinear).expand(3, -1, -1).contiguous()


def map_onto_image(
    amap: torch.Tensor, original_size: tuple[int, int], out_size: tuple[int, int], mode: str = "stretch"
) -> torch.Tensor:
    """An anomaly map (S, S) back on the image's own grid, at `out_size` (width, height): `placement` undone.

    The map's part that covers the image is resized bilinearly with antialiasing (as images are);
    with center_crop the strips the model never saw are 0.
    """
    size = int(amap.shape[-1])
    width, height = original_size
    out_width, out_height = out_size
    where = placement(int(width), int(height), size, mode)
    into_left, into_top, into_width, into_height = where.target
    covered = amap[into_top : into_top + into_height, into_left : into_left + into_width]
    left, top, used_width, used_height = where.source
    box_left, box_top = round(left * out_width / width), round(top * out_height / height)
    box = (  # the used box, scaled onto the output grid, at least one pixel
        box_left,
        box_top,
        max(box_left + 1, round((left + used_width) * out_width / width)),
        max(box_top + 1, round((top + used_height) * out_height / height)),
    )
    box_size = (box[3] - box[1], box[2] - box[0])
    if tuple(covered.shape) != box_size:
        covered = F.interpolate(
            covered[None, None], size=box_size, mode="bilinear", align_corners=False, antialias=True
        )[0, 0]
    if box_size == (out_height, out_width):
        return covered
    canvas = covered.new_full((out_height, out_width), LETTERBOX_FILL)
    canvas[box[1] : box[3], box[0] : box[2]] = covered
    return canvas


def aspect_change(width: int, height: int) -> float:
    """How much stretching to a square changes an image's aspect ratio (0.25: the long side 25 % longer)."""
    return max(width, height) / min(width, height) - 1.0


class StretchWarning:
    """One line on stderr, the first time stretching distorts an image by more than STRETCH_WARNING_PERCENT.

    One per run (or loaded model), never one per image: a folder of wide images says it once.
    """

    def __init__(self, mode: str) -> None:
        self.pending = mode == "stretch"

    def check(self, width: int, height: int, where: str | os.PathLike) -> None:
        long, short = max(width, height), min(width, height)
        if not self.pending or 100 * long <= (100 + STRETCH_WARNING_PERCENT) * short:  # in integers: 110x100 is 10 %
            return
        self.pending = False
        print(
            f"rlr: warning: {where} is {width}x{height}: data.resize=stretch changes its aspect ratio by "
            f"{aspect_change(width, height):.0%} (said once; data.resize letterbox or center_crop keep it)",
            file=sys.stderr,
        )


def warn_if_stretched(paths: Iterable[str | os.PathLike], mode: str) -> None:
    """Before any work, `StretchWarning` for the first of `paths` that stretching distorts (headers only).

    A file whose header cannot be read is passed over here: the reader that needs its pixels
    refuses it, naming it, when (and only if) that file is used.
    """
    warning = StretchWarning(mode)
    for path in paths:
        if not warning.pending:
            return
        try:
            warning.check(*image_size(path), path)
        except DataError:
            continue


def read_mask(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Decode a mask file as a bool (H, W) array: True where any colour channel is > 0.

    Alpha is ignored, so a transparent-but-coloured pixel counts as anomalous; palette masks
    are judged by their colours (black = normal), not by their palette indices.
    """
    image = read_image(path, max_pixels)
    if image.mode in ("1", "L", "I", "F") or image.mode.startswith("I;16"):
        return np.asarray(image) > 0
    try:
        rgb = _without_alpha(image)
    except (ValueError, OSError) as error:
        problem = f"unsupported mask mode {image.mode} ({_one_line(error)})"
        raise DataError(f"{path}: {problem}") from None
    return (np.asarray(rgb) > 0).any(axis=2)


def load_mask(
    path: str | os.PathLike, size: int, expected_size: tuple[int, int] | None = None, mode: str = "stretch"
) -> torch.Tensor:
    """Read a mask as float32 (1, size, size) in {0, 1}: binarised at > 0, resized nearest, placed by `mode`.

    `expected_size` is the image's own (width, height); a mask drawn at another size cannot be
    aligned with its image, so it is refused rather than stretched.
    """
    _check_size(size)
    mask = read_mask(path)
    height, width = mask.shape
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise DataError(
            f"{path}: mask size {width}x{height} differs from its image's size {expected_size[0]}x{expected_size[1]}"
        )
    return _place(torch.from_numpy(mask).float()[None], size, mode, _nearest)
