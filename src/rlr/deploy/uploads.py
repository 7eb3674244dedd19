"""Turn a /predict request body into named uploads, in memory and within the size limit.

Nothing touches the disk: the body is read into memory (it is bounded by the upload limit) and a
multipart body is split with python-multipart's streaming parser, not Starlette's form reader,
which spools files over 1 MB to temporary files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import AsyncIterator
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

DRAIN_LIMIT = 64 << 20  # a refused body up to this size is read and dropped, so the client sees the answer
FORM_FIELDS = ("class",)  # text fields a multipart body may carry besides its files


class RequestError(Exception):
    """A request the API refuses: an HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close  # the connection cannot be reused (the body was left unread)


@dataclass
class Upload:
    name: str
    data: bytes


@dataclass
class Body:
    uploads: list[Upload]
    fields: dict[str, str] = field(default_factory=dict)


def megabytes(size: int) -> str:
    return f"{size / 2**20:.3g}"


def _too_large(size: int, limit: int, close: bool) -> RequestError:
    message = f"upload of {megabytes(size)} MB exceeds the {megabytes(limit)} MB limit (see --max-upload-mb)"
    return RequestError(413, message, close)


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The whole body, refused with 413 once it passes `limit` bytes (checked before reading when declared).

    A refused body is read and dropped up to DRAIN_LIMIT, so the client, still sending, is not
    cut off by a reset before it reads the answer; beyond that the connection is closed.
    """
    declared: int | None = None
    if content_length is not None:
        if not content_length.strip().isdecimal():
            raise RequestError(400, f"invalid Content-Length header {content_length!r}", close=True)
        declared = int(content_length)
        if declared > DRAIN_LIMIT:
            raise _too_large(declared, limit, close=True)
    buffer = bytearray()
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > DRAIN_LIMIT:
            raise _too_large(received, limit, close=True)
        if received <= limit and (declared is None or declared <= limit):
            buffer += chunk
    if received > limit or (declared is not None and declared > limit):
        raise _too_large(max(received, declared or 0), limit, close=False)
    return bytes(buffer)


def upload_name(raw: str | None) -> str:
    """The base name of a client-given (URL-encoded) file name: for messages only, never a path used."""
    text = unquote(raw or "")
    base = PureWindowsPath(PurePosixPath(text).name).name
    return "".join(c if c.isprintable() else "?" for c in base)[:200] or "upload"


class _PartCollector:
    """python-multipart callbacks that gather each part's headers and bytes."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytearray]] = []
        self.finished = False
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": lambda: self.parts.append(({}, bytearray())),
            "on_part_data": lambda data, start, end: self.parts[-1][1].extend(data[start:end]),
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_end": self._end,
        }

    def _header_end(self) -> None:
        self.parts[-1][0][self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        self.finished = True


def split_multipart(body: bytes, content_type: str) -> Body:
    """The files of a multipart/form-data body (any field name) and its `class` text field."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart body without a boundary in its Content-Type")
    collector = _PartCollector()
    try:
        parser = MultipartParser(boundary, collector.callbacks())
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as error:
        raise RequestError(400, f"malformed multipart body ({error})") from None
    if not collector.finished:
        raise RequestError(400, "malformed multipart body (no closing boundary)")
    result = Body([])
    for headers, data in collector.parts:
        _, options = parse_options_header(headers.get("content-disposition", ""))
        field_name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            result.uploads.append(Upload(upload_name(options[b"filename"].decode("utf-8", "replace")), bytes(data)))
        elif field_name in FORM_FIELDS:
            result.fields[field_name] = data.decode("utf-8", "replace")
        else:
            raise RequestError(400, f"unexpected form field '{upload_name(field_name)}' (files, and 'class')")
    return result


def parse_body(body: bytes, content_type: str | None, filename_header: str | None) -> Body:
    """Multipart: its files; anything else: the body itself is one image, named by X-Filename."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return split_multipart(body, content_type or "")
    return Body([Upload(upload_name(filename_header), body)])
