"""Publish stage: fan scored frames out to WebSocket subscribers without ever waiting for one.

`publish` is called from the inference thread and only schedules work on the event loop. Each client
has its own bounded queue (drop policy "drop-oldest": a slow client loses its oldest messages, counted
in vad_websocket_messages_dropped_total) and its own sender task, so a slow or stalled client cannot
delay scoring or other clients. A client whose socket accepts nothing for `stuck_seconds` is
disconnected (close code 1008) and counted as reason "stuck". A client that stops reading altogether
is usually caught first by the server's keep-alive (VAD_WEBSOCKET_PING_INTERVAL_SECONDS +
VAD_WEBSOCKET_PING_TIMEOUT_SECONDS without a pong: uvicorn closes the connection with 1011): its kernel
buffers take many small messages before a send blocks. Reasons of vad_websocket_disconnects_total:
client_closed (the client sent a close frame), connection_lost (the connection ended without one: a
network drop or a keep-alive timeout), stuck, stream_deleted, shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .domain import FrameResult
from .metrics import ServiceMetrics

log = logging.getLogger("vad.publish")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


class _Client:
    def __init__(self, stream_id: str | None, queue_size: int, batch_seconds: float = 0.0) -> None:
        self.stream_id = stream_id  # None: every stream
        self.queue: deque[str] = deque()
        self.queue_size = queue_size
        self.batch_seconds = batch_seconds  # > 0: one JSON array of the interval's messages per send
        self.wakeup = asyncio.Event()
        self.close_with: tuple[int, str, str] | None = None  # (code, reason, metric reason)
        self.closing = asyncio.Event()

    def offer(self, text: str) -> bool:
        """Queue a message; returns True when the oldest had to be dropped to make room."""
        dropped = len(self.queue) >= self.queue_size
        if dropped:
            self.queue.popleft()
        self.queue.append(text)
        self.wakeup.set()
        return dropped

    def request_close(self, code: int, reason: str, metric_reason: str) -> None:
        if self.close_with is None:
            self.close_with = (code, reason, metric_reason)
        self.closing.set()
        self.wakeup.set()


class ScoreHub:
    """Fans FrameResults out (the score feeds); with `stream_of`, any message that belongs to a stream
    (the event feed publishes EventChange values)."""

    def __init__(
        self,
        queue_size: int,
        stuck_seconds: float,
        serialize: Callable[[Any], str],
        metrics: ServiceMetrics,
        stream_of: Callable[[Any], str | None] = lambda result: result.stream_id,
    ) -> None:
        self.queue_size = queue_size
        self.stuck_seconds = stuck_seconds
        self.serialize = serialize
        self.stream_of = stream_of
        self.metrics = metrics
        self._clients: set[_Client] = set()
        self._serving = 0  # serve() calls not finished yet (their close frame may still be on its way)
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # --- called from any thread -------------------------------------------------------------
    def publish(self, result: FrameResult | Any) -> None:
        if self._clients and self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                self._loop.call_soon_threadsafe(self._dispatch, result)

    def close_stream(self, stream_id: str) -> None:
        """Disconnect the subscribers of a deleted stream (close code 1000)."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._close_stream, stream_id)

    # --- event loop only --------------------------------------------------------------------
    def _dispatch(self, result: FrameResult | Any) -> None:
        text: str | None = None
        stream_id = self.stream_of(result)
        for client in self._clients:
            if client.close_with is None and client.stream_id in (None, stream_id):
                text = text or self.serialize(result)
                if client.offer(text):
                    self.metrics.websocket_dropped.inc()

    def _close_stream(self, stream_id: str) -> None:
        for client in self._clients:
            if client.stream_id == stream_id:
                client.request_close(CLOSE_NORMAL, "stream deleted", "stream_deleted")

    def close_all(self) -> None:
        for client in self._clients:
            client.request_close(CLOSE_GOING_AWAY, "server shutting down", "shutdown")

    async def close_all_and_wait(self, timeout: float) -> None:
        """Close every subscriber with 1001 and wait (at most `timeout` s) until their close frames are sent."""
        self.close_all()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._serving and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def serve(self, websocket: WebSocket, stream_id: str | None, batch_seconds: float = 0.0) -> None:
        """Run one accepted subscriber until it leaves, is closed, or its stream is deleted. With
        `batch_seconds` > 0 it gets at most one message per interval: a JSON array of the messages
        of that interval (a dashboard's chart needs every point, not a wake-up per frame)."""
        self._serving += 1
        try:
            await self._serve(websocket, stream_id, batch_seconds)
        finally:
            self._serving -= 1

    async def _serve(self, websocket: WebSocket, stream_id: str | None, batch_seconds: float) -> None:
        client = _Client(stream_id, self.queue_size, batch_seconds)
        self._clients.add(client)
        sender = asyncio.create_task(self._send_loop(websocket, client))
        receiver = asyncio.create_task(self._receive_loop(websocket))
        try:
            done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._clients.discard(client)
        if receiver in done:
            ended = receiver.result() if not receiver.cancelled() and receiver.exception() is None else None
            # uvicorn's disconnect message carries the close frame's "reason" when the client sent one
            # (even an empty one, as a browser's ws.close() does); without a close frame it has none.
            lost = ended is not None and "reason" not in ended
            self.metrics.websocket_disconnects.labels("connection_lost" if lost else "client_closed").inc()
            return
        code, reason, metric_reason = client.close_with or (CLOSE_NORMAL, "", "server_closed")
        self.metrics.websocket_disconnects.labels(metric_reason).inc()
        if websocket.application_state == WebSocketState.CONNECTED:
            # A stuck client may not even take the close frame: do not wait on it for long.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(code, reason), timeout=1.0)

    async def _send_loop(self, websocket: WebSocket, client: _Client) -> None:
        while client.close_with is None:
            if not client.queue:
                client.wakeup.clear()
                await client.wakeup.wait()
                continue
            if client.batch_seconds > 0:
                # Let the interval's messages gather (a close request cuts the wait short).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.closing.wait(), timeout=client.batch_seconds)
                if client.close_with is not None:
                    return
                count = len(client.queue)
                text = "[" + ",".join(client.queue) + "]"
                client.queue.clear()
            else:
                count = 1
                text = client.queue.popleft()
            try:
                await asyncio.wait_for(websocket.send_text(text), timeout=self.stuck_seconds)
            except TimeoutError:
                log.warning("closing a WebSocket client that accepted nothing for %.1f s", self.stuck_seconds)
                client.request_close(
                    CLOSE_POLICY, f"client too slow: no message accepted for {self.stuck_seconds:g} s", "stuck"
                )
                return
            except (WebSocketDisconnect, RuntimeError, OSError):
                client.request_close(CLOSE_NORMAL, "", "client_closed")
                return
            self.metrics.websocket_sent.inc(count)

    @staticmethod
    async def _receive_loop(websocket: WebSocket) -> dict:
        """Subscribers send nothing we need; reading notices their close promptly. -> the disconnect message."""
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return dict(message)
