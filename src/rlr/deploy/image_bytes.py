"""Decode an uploaded image from memory by its content, never by its name, within a pixel limit.

`rlr serve` must not write uploads to disk, so it cannot use `read_image` (which reads files);
this follows the same rules from bytes: the format is sniffed from the leading bytes and only
that one decoder is tried, the size is checked from the header before any pixel is decoded
(a decompression bomb costs nothing), the whole image is decoded (a truncated file fails here),
the EXIF orientation is applied, and every failure is one `DataError` line starting with the name.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from rlr.errors import DataError, one_line

# Leading bytes -> the one Pillow decoder allowed for them.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
KNOWN_FORMATS = "PNG, JPEG, BMP, GIF, TIFF or WebP"


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start with (a Pillow format name), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for signature, fmt in _SIGNATURES if data.startswith(signature)), None)


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode `data` in full (EXIF orientation applied); refuse non-images, corrupt ones and oversized ones."""
    if not data:
        raise DataError(f"{name}: empty upload (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise DataError(f"{name}: not an image file (the content is not {KNOWN_FORMATS})")
    try:
        with warnings.catch_warnings():  # our limit below replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as error:
        raise DataError(f"{name}: image too large ({one_line(error)})") from None
    except Exception as error:  # Pillow raises many types on a broken header
        raise DataError(f"{name}: truncated or corrupt image ({type(error).__name__}: {one_line(error)})") from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise DataError(f"{name}: image too large ({image.width} x {image.height} = {pixels} pixels > {max_pixels})")
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except Exception as error:  # truncated data, bad CRC, broken EXIF: all mean "corrupt"
        raise DataError(f"{name}: truncated or corrupt image ({type(error).__name__}: {one_line(error)})") from None
