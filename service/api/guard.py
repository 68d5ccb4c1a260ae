"""Checks made before any request body is read: the bearer token, then the body's size.

FastAPI reads and parses a JSON body before it runs the dependencies that check the token, so
without this guard an unauthenticated client could make the server read (and hold) a body of any
size. `RequestGuard` is an ASGI middleware in front of the app:

- a request for a protected path without the right token is answered 401 at once, at most
  DRAIN_BYTES of its body read (and dropped) within DRAIN_SECONDS;
- a body above its path's cap is answered 413: at once when Content-Length says so, else as soon
  as more bytes arrive than the cap (the app then sees the client as gone; its own answer is dropped). Frame and clip uploads have their own caps (VAD_MAX_UPLOAD_BYTES, read by
  their endpoints); every other body (JSON) is capped at JSON_BODY_LIMIT.

The routers keep their `Authorized` dependency too: it declares the security scheme in the OpenAPI
document, and a test checks that both agree on which paths are protected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..settings import Settings
from .deps import token_matches

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_BODY_LIMIT = 64 * 1024  # POST /v1/streams and any other JSON body: a few hundred bytes in practice
DRAIN_BYTES = 256 * 1024  # of a refused body, read and dropped before the answer (see _drain)
DRAIN_SECONDS = 1.0
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/", "/favicon.ico"})
# The dashboard's files (service/api/web.py): code, styles and vendored libraries, no data.
OPEN_PREFIXES = ("/ui/",)
# Endpoints that read their own body under VAD_MAX_UPLOAD_BYTES (service/api/uploads.py).
SELF_CAPPED = (re.compile(r"^/v1/streams/[^/]+/frames$"), re.compile(r"^/v1/score$"))


def is_protected(path: str, settings: Settings) -> bool:
    """Whether `path` needs the token when one is configured (HTTP; WebSockets check it on upgrade)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return False
    return not (path == "/metrics" and not settings.server.metrics_require_token)


def body_limit(path: str) -> int | None:
    """The guard's cap for a body sent to `path` (None: the endpoint caps it itself)."""
    return None if any(p.match(path) for p in SELF_CAPPED) else JSON_BODY_LIMIT


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.settings.server.api_token is not None and is_protected(path, self.settings):
            scheme, _, presented = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token_matches(self.settings, presented.strip() or None):
                await _drain(receive)
                await _answer(send, 401, "missing or wrong bearer token: send the header 'Authorization: Bearer TOKEN'",
                              {"WWW-Authenticate": "Bearer"})
                return
        limit = body_limit(path)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _drain(receive)
            await _answer(send, 413, f"body is {int(declared)} bytes, above the limit of {limit} bytes")
            return
        received = 0
        answered = False  # the guard sent the 413: whatever the app then answers is dropped

        async def counted() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request" and not answered:
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body that does not stop: end it here
                    answered = True
                    await _answer(send, 413, f"body exceeds the limit of {limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, counted, guarded_send)


async def _drain(receive: Receive, limit: int = DRAIN_BYTES, timeout_s: float = DRAIN_SECONDS) -> None:
    """Read and discard a little of a refused body before answering: closing a socket with unread
    bytes makes the kernel send a reset, and a client still writing a small body would see the reset
    instead of the answer. A large or slow body is not waited for."""
    async def discard() -> None:
        read = 0
        while read <= limit:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            read += len(message.get("body", b""))

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(discard(), timeout_s)


async def _answer(send: Send, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
