"""/v1/streams/{id}/ingest: push a stream's frames over one WebSocket and get the answers in order.

Client -> server:
  - a binary message: one encoded JPEG or PNG frame (what POST /v1/streams/{id}/frames takes);
  - optionally a text message {"timestamp": <seconds since the epoch>} before a frame: its capture
    time (default: receipt time).
Server -> client, one text message per frame, in the order the frames arrived:
  - the FrameResult object POST /v1/streams/{id}/frames answers ("warming", "scored" or "dropped");
  - or {"status": "rejected", "code": <the HTTP status POST would answer>, "detail": "..."} for a frame
    that was not accepted (too large, undecodable, ...). The connection stays open; nothing accepted
    before is lost. A text message that is not valid JSON is answered the same way (code 422).

Pipelining: up to `max_pending_per_stream` frames may wait for their answer. The server decodes the
next frame while the model scores the previous ones and stops reading at the bound, so a client that
sends faster than the model scores is slowed down by TCP back-pressure instead of losing frames to the
queue's drop-oldest policy. This is the fast path for one camera: over HTTP, one request per frame
waits for its answer before the next frame is sent.

Refusals are HTTP answers to the upgrade, as for the score feeds: 401, 404, 503. The server closes
with 1000 when the stream is deleted and 1001 at shutdown, after answering what it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from concurrent.futures import Future
from dataclasses import dataclass

from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .. import domain as d
from ..context import ServiceContext
from .deps import Context
from .errors import REJECTED, status_for
from .frames import decode_and_submit
from .schemas import FrameResultOut
from .uploads import wait_result
from .ws import admit

log = logging.getLogger("vad.ingest")
router = APIRouter(tags=["frames"])

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011


@dataclass(frozen=True)
class _Close:
    """End of the answers: close with this code once everything before it is sent."""

    code: int
    reason: str


Answer = Future[d.FrameResult] | str | _Close


def _rejection(context: ServiceContext, exc: d.ServiceError) -> str:
    reason = REJECTED.get(type(exc))
    if reason is not None:
        context.metrics.frames_rejected.labels(reason).inc()
    return json.dumps({"status": "rejected", "code": status_for(exc), "detail": str(exc)})


def _timestamp(text: str) -> float:
    try:
        value = json.loads(text)["timestamp"]
    except (ValueError, KeyError, TypeError) as exc:
        raise d.InvalidRequest(
            'a text message must be JSON {"timestamp": <seconds since the epoch>}; send frames as binary messages'
        ) from exc
    try:
        finite = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        finite = False
    if not finite:
        raise d.InvalidRequest(f"timestamp must be a finite number of seconds since the epoch, got {str(value)[:40]!r}")
    return float(value)


class IngestSession:
    """One connection: a reader that accepts frames and a writer that answers them in order."""

    def __init__(self, websocket: WebSocket, context: ServiceContext, stream_id: str) -> None:
        self.websocket, self.context, self.stream_id = websocket, context, stream_id
        window = context.settings.inference.max_pending_per_stream
        self.slots = asyncio.Semaphore(window)  # frames read but not answered yet
        self.answers: asyncio.Queue[Answer] = asyncio.Queue(maxsize=window + 1)  # +1: a final _Close

    async def run(self) -> None:
        reader, writer = asyncio.create_task(self._read()), asyncio.create_task(self._write())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:  # the client is gone: accepted frames are still scored and counted
                reader.cancel()
            elif not reader.cancelled() and reader.exception() is not None:
                writer.cancel()  # nothing more will be queued for it
            # Otherwise the writer answers what was accepted and ends at the _Close the reader queued.
            outcomes = await asyncio.gather(reader, writer, return_exceptions=True)
            failures = [o for o in outcomes if isinstance(o, Exception)]
            if failures:  # a bug, not a bad frame (those are answered): log it and end the connection
                log.error("ingest connection of stream %s failed", self.stream_id, exc_info=failures[0])
                await self._close(_Close(CLOSE_INTERNAL_ERROR, "internal error; the server log has the details"))
        finally:
            for task in (reader, writer):
                task.cancel()

    async def _read(self) -> None:
        limits = self.context.settings.limits
        shutdown = asyncio.ensure_future(self.context.shutdown_requested.wait())
        timestamp: float | None = None
        try:
            while True:
                await self.slots.acquire()
                receive = asyncio.ensure_future(self.websocket.receive())
                done, _ = await asyncio.wait({receive, shutdown}, return_when=asyncio.FIRST_COMPLETED)
                if shutdown in done:  # first, even when a frame is waiting: a sender that never pauses
                    receive.cancel()  # must still get its 1001, not a 503 for every further frame
                    self.slots.release()
                    await self.answers.put(_Close(CLOSE_GOING_AWAY, "server shutting down"))
                    return
                message = receive.result()
                received_at = time.monotonic()
                if message["type"] == "websocket.disconnect":
                    await self.answers.put(_Close(CLOSE_NORMAL, ""))
                    return
                try:
                    if message.get("text") is not None:
                        timestamp = _timestamp(message["text"])
                        self.slots.release()  # no answer owed for a timestamp
                        continue
                    data = message.get("bytes") or b""
                    if len(data) > limits.max_upload_bytes:
                        raise d.PayloadTooLarge(
                            f"frame is {len(data)} bytes, above the limit of {limits.max_upload_bytes} bytes"
                        )
                    future = await run_in_threadpool(
                        decode_and_submit, self.context, self.stream_id, data, timestamp, received_at
                    )
                    timestamp = None
                    await self.answers.put(future)
                except (d.StreamNotFound, d.StreamClosed) as exc:
                    await self.answers.put(_rejection(self.context, exc))
                    await self.answers.put(_Close(CLOSE_NORMAL, "stream deleted"))
                    return
                except d.ServiceError as exc:
                    timestamp = None
                    await self.answers.put(_rejection(self.context, exc))
        finally:
            shutdown.cancel()

    async def _write(self) -> None:
        timeout = self.context.settings.inference.result_timeout_seconds
        while True:
            answer = await self.answers.get()
            if isinstance(answer, _Close):
                await self._close(answer)
                return
            if isinstance(answer, Future):
                try:
                    text = FrameResultOut.from_domain(await wait_result(answer, timeout)).model_dump_json()
                except d.ResultTimeout as exc:
                    text = _rejection(self.context, exc)
            else:
                text = answer
            try:
                await self.websocket.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return  # the client left; the reader sees the disconnect and stops
            finally:
                self.slots.release()

    async def _close(self, close: _Close) -> None:
        if self.websocket.application_state == WebSocketState.CONNECTED and close.reason:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.websocket.close(close.code, close.reason), timeout=1.0)


@router.websocket("/v1/streams/{stream_id}/ingest")
async def ingest_frames(websocket: WebSocket, stream_id: str, context: Context) -> None:
    if not await admit(websocket, context, stream_id):
        return
    context.ingest_sessions += 1
    try:
        await IngestSession(websocket, context, stream_id).run()
    finally:
        context.ingest_sessions -= 1
