"""The HTTP API of `rlr serve`, on FastAPI: POST /predict, GET /health, GET /model, the page at /.

The model is loaded once, by the caller. Requests are parsed on the event loop and scored one
at a time on the scoring queue's worker (`scoring_queue.py`), within a per-request time limit.
Every refusal is JSON `{"error": "<one line>"}` with the status saying what kind it is:
400 bad input, 401 token, 408 body too slow, 413 too large, 422 bad parameter, 503 queue full,
504 time limit reached. OpenAPI docs are at /docs, the schema at /openapi.json.
"""

from __future__ import annotations

import asyncio
import functools
import json
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from matplotlib import colormaps
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from rlr import __version__
from rlr.deploy.api_auth import TokenGuard
from rlr.deploy.api_results import ResultOptions, data_url, score_uploads
from rlr.deploy.export import OPSET, export_info
from rlr.deploy.model import Model
from rlr.deploy.overlay import png_bytes
from rlr.deploy.scoring_queue import QueueFull, ScoringQueue
from rlr.deploy.uploads import RequestError, parse_body, read_body
from rlr.errors import DataError

MAX_IMAGES_PER_REQUEST = 32


@dataclass(frozen=True)
class Limits:
    """What one request may cost; checked before the work it would cause."""

    max_upload_bytes: int = 20 << 20
    max_pixels: int = 32_000_000
    request_timeout_s: float = 60.0
    queue_size: int = 64
    max_images: int = MAX_IMAGES_PER_REQUEST


class MapAnswer(BaseModel):
    encoding: Literal["png16", "array"] = Field(description="png16: 16-bit grey PNG, 0 = min, 65535 = max, linear")
    width: int
    height: int
    min: float
    max: float
    png: str | None = Field(None, description="base64 PNG at the model's image size (png16)")
    values: list[list[float]] | None = Field(None, description="rows of the map averaged down to map_size (array)")


class ImageAnswer(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(description="the uploaded file's name (X-Filename header, or the multipart filename)")
    class_name: str | None = Field(None, alias="class", description="class whose threshold was used")
    score: float = Field(description="raw image score (the run's scoring rule)")
    normalised_score: float | None = Field(
        description="score / (score + threshold): 0.5 at the threshold, above it anomalous; null uncalibrated"
    )
    threshold: float | None
    decision: Literal["anomalous", "normal", ""] = Field(description="'' when the run is not calibrated")
    size: list[int] = Field(description="[width, height] of the image as decoded (EXIF orientation applied)")
    map: MapAnswer | None = None
    overlay: str | None = Field(None, description="heatmap over the image, PNG data URL (overlay=true)")
    original: str | None = Field(None, description="the image as scored, PNG data URL (overlay=true)")
    colour_scale: list[float] | None = Field(None, description="[blue, red] map values of the overlay's colours")


class PredictAnswer(BaseModel):
    run: str
    results: list[ImageAnswer]


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body (name it with an X-Filename header), or several as "
        "multipart/form-data files (any field name) with an optional 'class' field. The format is "
        "read from the content, never from the name.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "class": {"type": "string"},
                    },
                }
            },
        },
    }
}
_REFUSALS = {
    code: {"description": text, "content": {"application/json": {"example": {"error": "..."}}}}
    for code, text in (
        (400, "not an image, corrupt, unknown class"),
        (401, "missing or wrong token"),
        (408, "body not received in time"),
        (413, "upload or image too large"),
        (503, "queue full: retry later"),
        (504, "time limit reached"),
    )
}


def _error(status: int, message: str, close: bool = False, retry: bool = False) -> JSONResponse:
    headers = {"Connection": "close"} if close else {}
    if retry:
        headers["Retry-After"] = "1"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def model_info(model: Model, limits: Limits) -> dict:
    """GET /model: the run, the model, its classes, thresholds and preprocessing, and the server's limits."""
    thresholds = model.thresholds
    return {
        "run": {"name": model.config.name, "checkpoint_sha256": model.checkpoint_digest},
        "model": {
            "name": model.config.model.name,
            "backbone": model.config.backbone.name,
            "image_size": model.image_size,
            "image_score": model.score_description,
        },
        "classes": model.class_names,
        "thresholds": None
        if thresholds is None
        else {"global": thresholds.global_threshold, "per_class": dict(thresholds.per_class)},
        "decision": "anomalous when score > threshold",
        "preprocessing": export_info(model, OPSET)["preprocessing"],
        "limits": asdict(limits),
    }


def _page(model: Model, limits: Limits) -> str:
    """The drag-and-drop page with its settings filled in (JSON-escaped, so no name can break out)."""
    scale = colormaps["jet"](range(256))[None, :, :3] * 255
    bar = data_url(png_bytes(Image.fromarray(scale.round().astype("uint8"))))
    settings = {
        "maxUpload": limits.max_upload_bytes,
        "classes": model.class_names,
        "run": model.config.name,
        "colourBar": bar,
    }
    page = resources.files("rlr").joinpath("static/index.html").read_text(encoding="utf-8")
    return page.replace("__SETTINGS__", json.dumps(settings).replace("<", "\\u003c"))


def create_app(model: Model, limits: Limits = Limits(), token: str | None = None) -> FastAPI:
    """The app for one loaded model; with `token`, every request must carry it (see api_auth)."""
    queue = ScoringQueue(limits.queue_size)
    page = _page(model, limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        queue.close()

    app = FastAPI(title="rlr", version=__version__, description=__doc__, redoc_url=None, lifespan=lifespan)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, f"{error.detail}: {request.method} {request.url.path}")

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid value')}")

    @app.middleware("http")
    async def no_caching(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
            },
        )

    @app.get("/health", summary="liveness and queue state")
    async def health() -> dict:
        return {"status": "ok", "queue": {"pending": queue.pending, "capacity": queue.capacity}}

    @app.get("/model", summary="the run, model, classes, thresholds, preprocessing and limits")
    async def describe_model() -> dict:
        return model_info(model, limits)

    @app.post(
        "/predict",
        response_model=PredictAnswer,
        response_model_exclude_unset=True,  # no null extras
        openapi_extra=_PREDICT_BODY,
        responses=_REFUSALS,
        summary="score one or several images",
    )
    async def predict(
        request: Request,
        class_name: str | None = Query(None, alias="class", description="use this class's threshold"),
        map_format: Literal["none", "png", "array"] = Query("none", alias="map", description="also return the map"),
        map_size: int = Query(64, ge=1, le=4096, description="side of the downsampled map (map=array)"),
        overlay: bool = Query(False, description="also return the overlay, the original and the colour scale"),
    ):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.request_timeout_s
        try:
            reading = read_body(request.stream(), request.headers.get("content-length"), limits.max_upload_bytes)
            body = await asyncio.wait_for(reading, limits.request_timeout_s)
            parsed = parse_body(body, request.headers.get("content-type"), request.headers.get("x-filename"))
        except RequestError as error:
            return _error(error.status, error.message, error.close)
        except ClientDisconnect:  # gone mid-upload: no one reads this answer, and there is nothing to log
            return _error(400, "the client closed the connection before sending the whole body", close=True)
        except asyncio.TimeoutError:
            return _error(408, f"upload not received within the {limits.request_timeout_s:g} s limit", close=True)
        chosen = class_name or parsed.fields.get("class") or None
        if chosen is not None and chosen not in model.class_names:
            known = ", ".join(model.class_names) or "none"
            return _error(400, f"unknown class '{chosen}' (this run knows: {known})")
        if not parsed.uploads or not any(upload.data for upload in parsed.uploads):
            return _error(400, "empty upload: send an image file as the body, or as multipart files")
        if len(parsed.uploads) > limits.max_images:
            return _error(413, f"{len(parsed.uploads)} images in one request; at most {limits.max_images}")
        options = ResultOptions(map_format, map_size, overlay)
        job = functools.partial(score_uploads, model, parsed.uploads, chosen, options, limits.max_pixels)
        try:
            results = await queue.run(job, max(0.0, deadline - loop.time()))
        except QueueFull:
            return _error(503, f"server busy: {queue.capacity} requests already queued; retry later", retry=True)
        except asyncio.TimeoutError:
            return _error(504, f"not scored within the {limits.request_timeout_s:g} s time limit (server busy)")
        except DataError as error:
            return _error(400, str(error))
        return {"run": model.config.name, "results": results}

    if token:
        app.add_middleware(TokenGuard, token=token)  # added last: runs first, before every route
    return app
