"""WebSocket score feeds: ordered delivery, all-streams feed, closing, and a stalled client that
must not delay scoring or other clients."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.serving import RunningServer, encode, metric_value

JPEG = {"content-type": "image/jpeg"}


def push(server: RunningServer, sid: str, frames) -> list[dict]:
    with server.client() as client:
        return [client.post(f"/v1/streams/{sid}/frames", content=encode(f), headers=JPEG).json() for f in frames]


def receive(ws, count: int, timeout: float = 20.0) -> list[dict]:
    return [json.loads(ws.recv(timeout=timeout)) for _ in range(count)]


def test_stream_feed_delivers_every_scored_frame_in_order(vad_server: RunningServer, video) -> None:
    sid = httpx.post(vad_server.url("/v1/streams"), json={}).json()["id"]
    with connect(vad_server.ws_url(f"/v1/streams/{sid}/scores"), open_timeout=10) as ws:
        responses = push(vad_server, sid, video[:14])
        messages = receive(ws, 10)
    assert [m["frame_index"] for m in messages] == list(range(4, 14))
    assert messages == [r for r in responses if r["status"] == "scored"]  # same object as the HTTP answer


def test_all_streams_feed_and_close_on_delete(vad_server: RunningServer, video) -> None:
    a = httpx.post(vad_server.url("/v1/streams"), json={"name": "a"}).json()["id"]
    b = httpx.post(vad_server.url("/v1/streams"), json={"name": "b"}).json()["id"]
    with connect(vad_server.ws_url("/v1/scores"), open_timeout=10) as everything, \
            connect(vad_server.ws_url(f"/v1/streams/{a}/scores"), open_timeout=10) as only_a:
        push(vad_server, a, video[:6])
        push(vad_server, b, video[10:16])
        got = receive(everything, 4)
        assert [(m["stream_id"], m["frame_index"]) for m in got] == [(a, 4), (a, 5), (b, 4), (b, 5)]
        assert [m["frame_index"] for m in receive(only_a, 2)] == [4, 5]
        httpx.delete(vad_server.url(f"/v1/streams/{a}"))
        with pytest.raises(ConnectionClosed) as closed:
            only_a.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert closed.value.rcvd.reason == "stream deleted"
        push(vad_server, b, video[16:17])  # the all-streams feed stays open
        assert receive(everything, 1)[0]["stream_id"] == b


def test_batched_feed_sends_every_result_in_few_arrays(vad_server: RunningServer, video) -> None:
    sid = httpx.post(vad_server.url("/v1/streams"), json={}).json()["id"]
    def sent_total() -> float:
        return metric_value(httpx.get(vad_server.url("/metrics")).text, "vad_websocket_messages_sent_total")

    sent_before = sent_total()
    with connect(vad_server.ws_url(f"/v1/streams/{sid}/scores?batch_ms=400"), open_timeout=10) as ws, \
            connect(vad_server.ws_url(f"/v1/streams/{sid}/scores"), open_timeout=10) as plain:
        began = time.monotonic()
        responses = push(vad_server, sid, video[:24])
        pushed_in = time.monotonic() - began
        scored = [r for r in responses if r["status"] == "scored"]
        got: list[dict] = []
        batches = 0
        while len(got) < len(scored):
            batch = json.loads(ws.recv(timeout=20))
            assert isinstance(batch, list) and batch, batch
            got += batch
            batches += 1
        assert receive(plain, len(scored)) == scored  # the plain feed is unchanged: one object per frame
    assert got == scored  # every result, in order, the same objects
    # At most one message per 400 ms while the frames were scored (plus the interval under way).
    assert batches <= pushed_in / 0.4 + 2, (batches, pushed_in)
    assert batches < len(scored)
    deadline = time.monotonic() + 5  # the counter moves once a send returned
    while sent_total() - sent_before < 2 * len(scored) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent_total() - sent_before == 2 * len(scored)  # counted per result, batched or not


def test_bad_batch_interval_is_refused_with_a_message(vad_server: RunningServer) -> None:
    sid = httpx.post(vad_server.url("/v1/streams"), json={}).json()["id"]
    for bad in ("-5", "abc", "10001", "1.5"):
        with pytest.raises(InvalidStatus) as caught:
            connect(vad_server.ws_url(f"/v1/streams/{sid}/scores?batch_ms={bad}"), open_timeout=10)
        response = caught.value.response
        assert response.status_code == 422, bad
        assert b"batch_ms" in response.body, response.body
    with pytest.raises(InvalidStatus) as caught:
        connect(vad_server.ws_url("/v1/scores?batch_ms=x"), open_timeout=10)
    assert caught.value.response.status_code == 422


def _stalled_subscriber(server: RunningServer, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads (tiny receive window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(1)
    assert reply.startswith(b"HTTP/1.1 101"), reply
    return sock


def test_stalled_client_is_dropped_and_closed_without_delaying_others(start_server, video) -> None:
    server = start_server(websocket_queue_size=4, websocket_stuck_seconds=1.0, send_buffer_bytes=4096)
    sid = httpx.post(server.url("/v1/streams"), json={}).json()["id"]
    stalled = _stalled_subscriber(server, f"/v1/streams/{sid}/scores")
    received: list[dict] = []
    with connect(server.ws_url(f"/v1/streams/{sid}/scores"), open_timeout=10) as healthy:
        reader = threading.Thread(
            target=lambda: received.extend(json.loads(m) for m in healthy), daemon=True
        )
        reader.start()
        scored = 0
        deadline = time.monotonic() + 60
        with server.client() as client:
            # Push until the stalled client's socket buffers fill, its queue overflows and it is closed.
            for i in range(5000):
                r = client.post(f"/v1/streams/{sid}/frames", content=encode(video[i % len(video)]), headers=JPEG)
                assert r.status_code == 200 and r.json()["status"] in ("warming", "scored")
                scored += r.json()["status"] == "scored"
                if i % 20 == 0:
                    metrics = server.metrics()
                    if metric_value(metrics, "vad_websocket_disconnects_total", {"reason": "stuck"}) >= 1:
                        break
                assert time.monotonic() < deadline, "the stalled client was never closed"
        while len(received) < scored and time.monotonic() < deadline:
            time.sleep(0.05)
    stalled.close()
    print(f"stalled client closed after {scored} scored frames")
    # The healthy client got every scored frame, in order, although the other stalled.
    assert [m["frame_index"] for m in received[:scored]] == list(range(4, 4 + scored))
    assert metric_value(metrics, "vad_websocket_messages_dropped_total") >= 1
    assert metric_value(metrics, "vad_websocket_clients") == 1
