"""`rlr serve`: the HTTP API and the drag-and-drop page (`api.py`) on uvicorn.

What this module adds around the app is exposure policy: it listens on 127.0.0.1 unless told
otherwise, and any other host needs an API token; it checks every setting before the model
loads, so a wrong port or limit costs one line and no wait; and it sets the socket limits:
a listen backlog deep enough for bursts of clients to queue rather than be reset, connections
idle (even before their first request) closed after a few seconds, a cap on open connections.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import re
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from rlr.deploy.api import Limits, create_app
from rlr.deploy.api_auth import MIN_TOKEN_LENGTH, TOKEN_ENV
from rlr.deploy.model import Model
from rlr.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
BACKLOG = 1024  # pending connections the kernel holds (capped by net.core.somaxconn)
IDLE_TIMEOUT_S = 5  # a connection that sends no request for this long is closed
MAX_CONNECTIONS = 256  # open connections + running requests; beyond it uvicorn answers 503
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")  # what secrets.token_urlsafe and base64 produce


@dataclass(frozen=True)
class ServeSettings:
    host: str = DEFAULT_HOST
    port: int = 8000
    token: str | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive_finite(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number above 0, got {value:g}")
    return value


def check_settings(
    host: str = DEFAULT_HOST,
    port: int = 8000,
    token: str | None = None,
    max_upload_mb: float = 20.0,
    max_megapixels: float = 32.0,
    timeout_s: float = 60.0,
    queue_size: int = 64,
) -> ServeSettings:
    """Settings checked as a whole, each problem one ConfigError line naming its option."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must lie in 0..65535 (0: any free port), got {port}")
    if token is not None:
        if not _TOKEN_CHARS.fullmatch(token):
            raise ConfigError("the API token may only hold letters, digits and ._~+/=- (e.g. secrets.token_urlsafe())")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"the API token must have at least {MIN_TOKEN_LENGTH} characters, got {len(token)}")
    elif not is_loopback(host):
        raise ConfigError(
            f"--host {host} makes the server reachable from other machines: give an API token "
            f"with --token or ${TOKEN_ENV} (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if queue_size < 1:
        raise ConfigError(f"--queue must be at least 1, got {queue_size}")
    upload = _positive_finite("--max-upload-mb", max_upload_mb)
    pixels = _positive_finite("--max-megapixels", max_megapixels)
    limits = Limits(
        max_upload_bytes=max(1, int(upload * 2**20)),
        max_pixels=max(1, int(pixels * 1e6)),
        request_timeout_s=_positive_finite("--timeout", timeout_s),
        queue_size=queue_size,
    )
    return ServeSettings(host, port, token, limits)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or one ConfigError line saying why not (in use, no such address)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as error:
        raise ConfigError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use (stop that server or choose --port)") from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host}: not an address of this machine") from None
        if error.errno == errno.EACCES:
            raise ConfigError(f"port {port} on {host}: permission denied (ports below 1024 need privileges)") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror})") from None
    sock.listen(BACKLOG)  # from now on clients queue, even while the model is still loading
    return sock


class IdleClosingProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus: a connection that has not started a request within
    IDLE_TIMEOUT_S of opening, or of its last answer, is closed.

    uvicorn only times out keep-alive connections after an answer, so a client that opens a
    connection and sends nothing (or trickles its headers) would hold it forever.
    """

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        self._close_if_no_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._close_if_no_request()

    def _close_if_no_request(self) -> None:
        waiting_after = self.cycle  # a new request replaces it

        def expire() -> None:
            if self.cycle is waiting_after and not self.transport.is_closing():
                self.transport.close()

        self.loop.call_later(self.timeout_keep_alive, expire)


def uvicorn_server(app: FastAPI) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        http=IdleClosingProtocol,
        ws="none",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=IDLE_TIMEOUT_S,
        backlog=BACKLOG,
        limit_concurrency=MAX_CONNECTIONS,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


@contextmanager
def serving_in_thread(app: FastAPI, sock: socket.socket) -> Iterator[str]:
    """Serve `app` on `sock` from a background thread (tests, embedding); yields the base URL."""
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server thread stopped before it started")
            thread.join(0.05)
        host, port = sock.getsockname()[:2]
        yield ServeSettings(host, port).url
    finally:
        server.should_exit = True
        thread.join(30)


def serve(run_dir: str, settings: ServeSettings, device: str | None = None) -> None:
    """Check the address, load the run, then serve until interrupted (Ctrl-C)."""
    sock = bind(settings.host, settings.port)
    model = Model.load(run_dir, device)
    app = create_app(model, settings.limits, settings.token)
    address = ServeSettings(settings.host, sock.getsockname()[1])
    print(
        f"rlr serve: run '{model.config.name}' at {address.url} (page), {address.url}docs (API); Ctrl-C stops",
        flush=True,
    )
    if settings.token:
        print(
            "rlr serve: every request needs the API token: 'Authorization: Bearer <token>' "
            f"(browsers: {address.url}?token=<token>)",
            flush=True,
        )
    limits = settings.limits
    print(
        f"rlr serve: uploads up to {limits.max_upload_bytes / 2**20:g} MB and {limits.max_pixels / 1e6:g} MP, "
        f"{limits.request_timeout_s:g} s per request, {limits.queue_size} queued at most",
        flush=True,
    )
    try:
        uvicorn_server(app).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    print("rlr serve: stopped", flush=True)
