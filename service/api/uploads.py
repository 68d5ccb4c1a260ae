"""Reading request bodies under a byte cap and a time limit, and awaiting pipeline results.

A body is also cut short by a graceful shutdown (503 "server shutting down", so the server exits
well within its grace period) and by the client going away (starlette's ClientDisconnect, which
service/api/errors.py answers without a 500)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import TypeVar

from starlette.requests import Request

from ..domain import InvalidRequest, NotReady, PayloadTooLarge, ResultTimeout, UploadTimeout


async def read_body_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refusing more than `limit` bytes: first from Content-Length, then by counting
    what actually arrives (chunked uploads, lying headers)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest(f"invalid Content-Length header {declared!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body is {int(declared)} bytes, above the limit of {limit} bytes")

    async def read() -> bytes:
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    shutdown: asyncio.Event = request.app.state.service.shutdown_requested
    if shutdown.is_set():
        raise NotReady("server shutting down")
    reading = asyncio.ensure_future(asyncio.wait_for(read(), timeout_s))
    stopping = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not reading.done():
            reading.cancel()
    if not reading.done() or reading.cancelled():
        raise NotReady("server shutting down: the upload was not finished")
    try:
        return reading.result()
    except TimeoutError as exc:
        raise UploadTimeout(f"the request body did not arrive within {timeout_s:g} s") from exc


T = TypeVar("T")


async def wait_result(future: Future[T], timeout_s: float) -> T:
    try:
        # shield: a timeout here must not cancel the frame; it is still scored and counted.
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout_s)
    except TimeoutError as exc:
        raise ResultTimeout(f"no score within {timeout_s:g} s; the frame is still queued") from exc
