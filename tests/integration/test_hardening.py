"""Production hardening: auth and size checks before a body is read, a client leaving mid-upload,
graceful shutdown with uploads and ingest connections in flight, WebSocket keep-alive and size limits."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.serving import RunningServer, encode, metric_value

TOKEN = {"Authorization": "Bearer s3cret"}


def raw_request(server: RunningServer, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, str]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest.decode(errors="replace")


def leave_mid_body(server: RunningServer, head: str, part: bytes) -> float:
    """Send `head` and part of its body, go away, and wait until the server counted it; -> the count before."""
    before = metric_value(server.metrics(), "vad_http_client_disconnects_total")
    sock = raw_request(server, head, part)
    time.sleep(0.3)
    sock.close()
    deadline = time.monotonic() + 5
    while metric_value(server.metrics(), "vad_http_client_disconnects_total") == before:
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.05)
    return before


def test_an_unauthenticated_body_is_refused_before_it_is_read(start_server) -> None:
    server = start_server(api_token="s3cret")
    began = time.monotonic()
    # 200 MB announced, not one byte of it sent: the 401 must come without waiting for the body.
    sock = raw_request(server, "POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               "Content-Length: 200000000")
    status, body = read_response(sock)
    sock.close()
    assert status == 401 and "bearer token" in json.loads(body)["detail"]
    assert time.monotonic() - began < 3
    assert httpx.get(server.url("/healthz")).status_code == 200


def test_json_bodies_are_capped_before_they_are_read(start_server) -> None:
    server = start_server(api_token="s3cret")
    sock = raw_request(server, "POST /v1/streams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                               "Content-Type: application/json\r\nContent-Length: 1000000")
    status, body = read_response(sock)
    sock.close()
    assert status == 413 and "above the limit of 65536 bytes" in json.loads(body)["detail"]

    def endless() -> object:  # chunked, no Content-Length
        yield b'{"name": "'
        for _ in range(100):
            yield b"x" * 4096

    response = httpx.post(server.url("/v1/streams"), content=endless(), headers={**TOKEN, "content-type": "application/json"})
    assert response.status_code == 413 and "exceeds the limit of 65536 bytes" in response.json()["detail"]
    ok = httpx.post(server.url("/v1/streams"), json={"name": "small"}, headers=TOKEN)
    assert ok.status_code == 201
    assert httpx.get(server.url("/v1/streams"), headers=TOKEN).json()["count"] == 1


def test_a_client_leaving_mid_upload_is_counted_not_a_server_error(vad_server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sid = httpx.post(vad_server.url("/v1/streams"), json={}).json()["id"]
    before = leave_mid_body(vad_server, f"POST /v1/streams/{sid}/frames HTTP/1.1\r\nHost: x\r\n"
                                        "Content-Type: image/jpeg\r\nContent-Length: 100000",
                            b"\xff\xd8" + b"\0" * 1000)
    assert metric_value(vad_server.metrics(), "vad_http_client_disconnects_total") == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert any("client went away during POST" in r.getMessage() for r in caplog.records)
    assert httpx.get(vad_server.url(f"/v1/streams/{sid}")).json()["frames_received"] == 0


def test_an_upload_in_flight_at_shutdown_is_answered_503_and_exit_is_prompt(start_server) -> None:
    server = start_server()
    sid = httpx.post(server.url("/v1/streams"), json={}).json()["id"]
    sock = raw_request(server, f"POST /v1/streams/{sid}/frames HTTP/1.1\r\nHost: x\r\n"
                               "Content-Type: image/jpeg\r\nContent-Length: 100000", b"\xff\xd8" + b"\0" * 1000)
    time.sleep(0.3)
    began = time.monotonic()
    server.server.should_exit = True
    status, body = read_response(sock)
    sock.close()
    assert status == 503 and "shutting down" in json.loads(body)["detail"]
    assert server.thread is not None
    server.thread.join(4)  # the test server's grace period is 5 s: ending sooner means nothing waited for it
    assert not server.thread.is_alive() and time.monotonic() - began < 4


def test_an_ingest_client_that_never_pauses_gets_1001_at_shutdown(start_server, video) -> None:
    server = start_server()
    sid = httpx.post(server.url("/v1/streams"), json={}).json()["id"]
    frame = encode(video[0])
    codes: list[int | None] = []
    with connect(server.ws_url(f"/v1/streams/{sid}/ingest"), open_timeout=10) as ws:
        stop = threading.Event()

        def reader() -> None:
            try:
                while True:
                    ws.recv(timeout=20)
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)
                codes.append(exc.rcvd.reason if exc.rcvd else None)  # type: ignore[arg-type]
                stop.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        for _ in range(20):
            ws.send(frame)
        server.server.should_exit = True
        while not stop.is_set():
            try:
                ws.send(frame)  # keeps sending, never pauses
            except ConnectionClosed:
                break
            time.sleep(0.005)
        thread.join(10)
    assert codes[:2] == [1001, "server shutting down"]


def raw_websocket(server: RunningServer, path: str) -> socket.socket:
    """A WebSocket client that completes the upgrade and then never reads again (no pongs either)."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    status, _ = read_response(sock)
    assert status == 101
    return sock


def test_a_subscriber_that_never_reads_is_dropped_by_the_keepalive(start_server) -> None:
    server = start_server(websocket_ping_interval_seconds=0.2, websocket_ping_timeout_seconds=0.3)
    sock = raw_websocket(server, "/v1/scores")
    deadline = time.monotonic() + 10
    while metric_value(server.metrics(), "vad_websocket_disconnects_total", {"reason": "connection_lost"}) < 1:
        assert time.monotonic() < deadline, server.metrics()
        time.sleep(0.1)
    assert metric_value(server.metrics(), "vad_websocket_clients") == 0
    assert metric_value(server.metrics(), "vad_websocket_disconnects_total", {"reason": "client_closed"}) == 0
    sock.close()


def test_websocket_messages_above_the_upload_cap_and_above_the_message_cap(start_server, video) -> None:
    limit = 256 * 1024  # the test servers' max_upload_bytes
    server = start_server(websocket_max_message_bytes=2 * limit)
    sid = httpx.post(server.url("/v1/streams"), json={}).json()["id"]
    with connect(server.ws_url(f"/v1/streams/{sid}/ingest"), open_timeout=10, max_size=None) as ws:
        ws.send(b"\0" * (limit + 1))  # too large a frame, within the message cap: answered in place
        answer = json.loads(ws.recv(timeout=10))
        assert answer["status"] == "rejected" and answer["code"] == 413
        ws.send(encode(video[0]))
        assert json.loads(ws.recv(timeout=10))["status"] == "warming"  # still open
        with pytest.raises(ConnectionClosed) as closed:  # above the message cap: the connection ends
            ws.send(b"\0" * (2 * limit + 1))
            ws.recv(timeout=10)
    if closed.value.rcvd is not None:  # the close frame may be lost to a reset while we still send
        assert closed.value.rcvd.code == 1009
    assert httpx.get(server.url("/healthz")).status_code == 200


def test_the_message_cap_must_hold_a_frame(service_settings) -> None:
    from service.settings import SettingsError

    with pytest.raises(SettingsError, match="VAD_WEBSOCKET_MAX_MESSAGE_BYTES .* must be at least VAD_MAX_UPLOAD_BYTES"):
        service_settings(websocket_max_message_bytes=1024)


def test_deep_or_huge_numbers_in_a_body_are_422_not_500(vad_server, video) -> None:
    deep: object = 1.0
    for _ in range(450):
        deep = [deep]
    r = httpx.post(vad_server.url("/v1/streams"), json={"options": {"a": deep}})
    assert r.status_code == 422 and "nest at most" in r.json()["detail"], r.text
    huge = "1" + "0" * 400
    body = '{"source": "rtsp://127.0.0.1:9/cam", "options": {"max_fps": ' + huge + "}}"
    r = httpx.post(vad_server.url("/v1/streams"), content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["detail"], r.text
    very_deep = "[" * 3000 + "]" * 3000
    r = httpx.post(vad_server.url("/v1/streams"), content='{"options": {"a": ' + very_deep + "}}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    sid = httpx.post(vad_server.url("/v1/streams"), json={}).json()["id"]
    with connect(vad_server.ws_url(f"/v1/streams/{sid}/ingest"), open_timeout=10) as ws:
        ws.send(json.dumps({"timestamp": 0}).replace("0", huge))
        ws.send(encode(video[0]))
        answer = json.loads(ws.recv(timeout=10))
        assert answer["status"] == "rejected" and answer["code"] == 422 and "finite" in answer["detail"]
        assert json.loads(ws.recv(timeout=10))["status"] == "warming"  # the connection stayed open


def test_a_client_leaving_mid_json_body_is_counted(vad_server) -> None:
    leave_mid_body(vad_server, "POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               "Content-Length: 1000", b'{"name": "')
