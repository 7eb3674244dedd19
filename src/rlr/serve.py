"""`rlr serve`: a local web page to drop an image on and see its heatmap, score and decision.

Python's own `http.server` (threaded) bound to 127.0.0.1: no extra dependency, nothing exposed
beyond this machine. The page POSTs the file's raw bytes to /predict and gets JSON back. Uploads
over the size limit get 413, files that are not readable images 400, each with a one-line message.
One image is scored at a time (a lock), so a burst of uploads cannot exhaust memory.
"""

from __future__ import annotations

import base64
import json
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from rlr.errors import DataError
from rlr.inference import Model
from rlr.predict import display_image, png_bytes, render_overlay

HOST = "127.0.0.1"
DEFAULT_MAX_UPLOAD_MB = 20.0
OVERLAY_MAX_SIDE = 1024
_DRAIN_LIMIT = 64 << 20  # read and drop at most this much of a refused upload, so the client sees the answer


class PredictServer(ThreadingHTTPServer):
    """The HTTP server plus what every request needs: the model, the upload limit, a scoring lock."""

    daemon_threads = True

    def __init__(self, model: Model, port: int = 0, max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)) -> None:
        super().__init__((HOST, port), PredictHandler)
        self.model = model
        self.max_upload_bytes = max_upload_bytes
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


class PredictHandler(BaseHTTPRequestHandler):
    server: PredictServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a line per request on stderr is noise for a desk tool."""

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page at {self.path}"})
            return
        page = resources.files("rlr").joinpath("static/index.html").read_text(encoding="utf-8")
        page = page.replace("__MAX_UPLOAD_BYTES__", str(self.server.max_upload_bytes))
        page = page.replace("__CLASSES__", json.dumps(self.server.model.class_names).replace("<", "\\u003c"))
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", page.encode("utf-8"))

    def do_POST(self) -> None:
        if self.path != "/predict":
            self.close_connection = True  # the unread body must not be taken for the next request
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint at {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "upload needs a valid Content-Length header"})
            return
        if length > self.server.max_upload_bytes:
            self._refuse_oversized(length)
            return
        data = self.rfile.read(length)
        name = Path(unquote(self.headers.get("X-Filename", "upload"))).name or "upload"
        class_name = unquote(self.headers.get("X-Class", "")) or None
        if class_name is not None and class_name not in self.server.model.class_names:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"unknown class '{class_name}'"})
        elif not data:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "empty upload: choose an image file"})
        else:
            try:
                self._json(HTTPStatus.OK, self._predict(data, name, class_name))
            except DataError as error:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})

    def _predict(self, data: bytes, name: str, class_name: str | None) -> dict:
        """Score the uploaded bytes through a temporary file, so they meet every rule files meet."""
        with tempfile.TemporaryDirectory(prefix="rlr-serve-") as folder:
            path = Path(folder) / "upload"
            path.write_bytes(data)
            try:
                with self.server.lock:
                    result = self.server.model.predict(path, class_name=class_name)
                overlay = render_overlay(result, display_image(path), OVERLAY_MAX_SIDE)
            except DataError as error:
                raise DataError(str(error).replace(str(path), name, 1)) from None
        return {
            "name": name,
            "score": result.score,
            "threshold": result.threshold,
            "decision": result.decision,
            "class": class_name,
            "size": list(result.original_size),
            "overlay": "data:image/png;base64," + base64.b64encode(png_bytes(overlay)).decode("ascii"),
        }

    def _refuse_oversized(self, length: int) -> None:
        """413; the body is read and dropped when small enough, so the client gets to see the answer."""
        if length <= _DRAIN_LIMIT:
            remaining = length
            while remaining > 0 and self.rfile.read(min(1 << 20, remaining)):
                remaining -= 1 << 20
        else:
            self.close_connection = True
        limit = self.server.max_upload_bytes
        message = f"upload of {length_mb(length)} MB exceeds the {length_mb(limit)} MB limit (see --max-upload-mb)"
        self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": message})

    def _json(self, status: HTTPStatus, payload: dict) -> None:
        self._send(status, "application/json", json.dumps(payload).encode("utf-8"))

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def length_mb(size: int) -> str:
    return f"{size / 2**20:.3g}"


def serve(model: Model, port: int = 8000, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> None:
    """Serve until interrupted (Ctrl-C), printing the address to open."""
    server = PredictServer(model, port, int(max_upload_mb * 2**20))
    print(f"rlr serve: open {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("rlr serve: stopped", flush=True)
    finally:
        server.server_close()
