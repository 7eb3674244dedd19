"""Data text (class names, file names, defect types) made safe for the report's figures and HTML pages.

File names need not be UTF-8: Python holds their undecodable bytes as lone surrogates
(os.fsdecode), which matplotlib cannot draw and a UTF-8 page cannot hold. Both get the bytes as
backslash escapes instead (`cl\\xffass`), the way the CLI prints such names.
"""

from __future__ import annotations

import base64
import html


def printable(text: object) -> str:
    """The text with every undecodable byte shown as a `\\xNN` escape: valid UTF-8, nothing lost."""
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to: show its code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def plot_text(text: object) -> str:
    """Text for a matplotlib title, label or legend: printable, and `$` kept literal (it starts math
    mode, where a name such as `a$\\x$` fails to parse when the figure is drawn)."""
    return printable(text).replace("$", r"\$")


def html_text(text: object) -> str:
    """Text for the HTML page: printable, then escaped."""
    return html.escape(printable(text))


def png_tag(png: bytes, alt: str) -> str:
    """An inline <img> of PNG bytes (the page needs no other file), its alt text from `html_text`."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html_text(alt)}">'
