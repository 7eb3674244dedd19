"""The API token of `rlr serve`, checked on every request (page, docs, API, unknown paths) first.

A client sends `Authorization: Bearer <token>`. A browser cannot add that header to a page it
opens, so `?token=<token>` in the address is accepted too, and answered with an HttpOnly,
SameSite=Strict cookie that carries the token on the page's (and the docs') later requests.
"""

from __future__ import annotations

import hmac
import json

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_ENV = "RLR_SERVE_TOKEN"
COOKIE_NAME = "rlr_token"
MIN_TOKEN_LENGTH = 16
REFUSAL = "missing or wrong API token: send 'Authorization: Bearer <token>' (in a browser, open /?token=<token>)"


class TokenGuard:
    """ASGI middleware: requests without the right token get 401 before any route runs."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode("utf-8")

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan events carry no request
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(credentials.strip()):
            await self.app(scope, receive, send)
        elif self._matches(connection.query_params.get("token")):
            await self.app(scope, receive, self._setting_cookie(send))
        elif self._matches(connection.cookies.get(COOKIE_NAME)):
            await self.app(scope, receive, send)
        else:
            await _refuse(send)

    def _setting_cookie(self, send: Send) -> Send:
        cookie = f"{COOKIE_NAME}={self._token.decode()}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return sender


async def _refuse(send: Send) -> None:
    body = json.dumps({"error": REFUSAL}).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
