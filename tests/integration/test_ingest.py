"""WebSocket ingest (/v1/streams/{id}/ingest) against a real server: answers in order and equal to the
HTTP push path, bad frames rejected in place without losing the connection, back-pressure instead of
drops for a client that sends faster than the model, refusals, deletion while connected."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.serving import RunningServer, encode, metric_value

JPEG = {"content-type": "image/jpeg"}


def new_stream(server: RunningServer) -> str:
    r = httpx.post(server.url("/v1/streams"), json={})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def send_all(ws, messages: list[bytes | str]) -> threading.Thread:
    """Send every message from a thread as fast as the server reads them (it stops reading at its bound)."""
    sender = threading.Thread(target=lambda: [ws.send(m) for m in messages], daemon=True)
    sender.start()
    return sender


def receive(ws, count: int, timeout: float = 30.0) -> list[dict]:
    return [json.loads(ws.recv(timeout=timeout)) for _ in range(count)]


def comparable(answer: dict) -> dict:
    """An answer without what depends on timing (latency, receipt time) and stream identity."""
    return {k: v for k, v in answer.items() if k not in ("latency_ms", "timestamp", "stream_id")}


def test_pipelined_ingest_answers_every_frame_in_order_like_http_push(vad_server: RunningServer, video) -> None:
    over_ws, over_http = new_stream(vad_server), new_stream(vad_server)
    frames = [encode(f) for f in video[:16]]
    with connect(vad_server.ws_url(f"/v1/streams/{over_ws}/scores"), open_timeout=10) as feed, \
            connect(vad_server.ws_url(f"/v1/streams/{over_ws}/ingest"), open_timeout=10) as ingest:
        sender = send_all(ingest, frames)
        answers = receive(ingest, len(frames))
        sender.join(10)
        published = receive(feed, 12)
        assert metric_value(vad_server.metrics(), "vad_ingest_connections") == 1
    with vad_server.client() as client:
        expected = [client.post(f"/v1/streams/{over_http}/frames", content=f, headers=JPEG).json() for f in frames]
    assert [a["frame_index"] for a in answers] == list(range(16))
    assert [a["status"] for a in answers] == ["warming"] * 4 + ["scored"] * 12
    assert all(a["stream_id"] == over_ws for a in answers)
    for got, want in zip(answers, expected, strict=True):
        got, want = comparable(got), comparable(want)
        for key in ("score", "normalized_score", "smoothed_score"):
            if want[key] is not None:  # another batch composition may change the last float bits
                assert got.pop(key) == pytest.approx(want.pop(key), rel=1e-4, abs=1e-6)
        assert got == want
    assert published == [a for a in answers if a["status"] == "scored"]  # the feed sees the same objects
    info = httpx.get(vad_server.url(f"/v1/streams/{over_ws}")).json()
    assert (info["frames_received"], info["frames_scored"], info["frames_dropped"]) == (16, 12, 0)


def test_bad_frames_are_rejected_in_place_and_the_connection_stays_open(vad_server: RunningServer, video) -> None:
    sid = new_stream(vad_server)
    too_big = b"\xff\xd8" + b"\0" * vad_server.settings.limits.max_upload_bytes
    before = vad_server.metrics()
    messages: list[bytes | str] = [
        encode(video[0]), b"not an image", encode(video[1]), too_big, "no json", '{"timestamp": "soon"}',
        encode(video[2]), b"", '{"timestamp": 1700000000.5}', encode(video[3]), encode(video[4]),
    ]
    with connect(vad_server.ws_url(f"/v1/streams/{sid}/ingest"), open_timeout=10, max_size=None) as ingest:
        sender = send_all(ingest, messages)
        answers = receive(ingest, 10)  # one per frame or bad text; the good timestamp is not answered
        sender.join(10)
    statuses = [(a["status"], a.get("code")) for a in answers]
    assert statuses == [
        ("warming", None), ("rejected", 422), ("warming", None), ("rejected", 413), ("rejected", 422),
        ("rejected", 422), ("warming", None), ("rejected", 422), ("warming", None), ("scored", None),
    ]
    assert "cannot decode this image" in answers[1]["detail"]
    assert "above the limit" in answers[3]["detail"]
    assert "binary messages" in answers[4]["detail"]
    assert "finite number" in answers[5]["detail"]
    assert "empty body" in answers[7]["detail"]
    accepted = [a for a in answers if a["status"] != "rejected"]
    assert [a["frame_index"] for a in accepted] == [0, 1, 2, 3, 4]  # nothing accepted was lost
    assert accepted[3]["timestamp"] == 1700000000.5  # the timestamp applies to the next frame only
    assert accepted[4]["timestamp"] != 1700000000.5
    after = vad_server.metrics()
    for reason, count in (("invalid_image", 2), ("too_large", 1), ("invalid_request", 2)):
        grew = metric_value(after, "vad_frames_rejected_total", {"reason": reason}) - metric_value(
            before, "vad_frames_rejected_total", {"reason": reason})
        assert grew == count, reason


def test_a_client_faster_than_the_model_is_slowed_down_not_dropped(start_server, video) -> None:
    server = start_server(extra_inference_latency_ms=40.0, max_pending_per_stream=2)
    sid = new_stream(server)
    frames = [encode(f) for f in video[:30]]
    with connect(server.ws_url(f"/v1/streams/{sid}/ingest"), open_timeout=10) as ingest:
        sender = send_all(ingest, frames)
        answers = receive(ingest, len(frames))
        sender.join(10)
    assert [a["status"] for a in answers] == ["warming"] * 4 + ["scored"] * 26
    assert metric_value(server.metrics(), "vad_frames_dropped_total", {"stream": sid}) == 0
    # Over HTTP, the same burst sent without waiting overflows the per-stream queue (drop-oldest).
    other = new_stream(server)
    with httpx.Client(base_url=server.base, timeout=30.0) as client:
        for f in frames[:5]:  # warm up
            client.post(f"/v1/streams/{other}/frames", content=f, headers=JPEG)
        results: list[dict] = []
        threads = [threading.Thread(target=lambda f=f: results.append(
            client.post(f"/v1/streams/{other}/frames", content=f, headers=JPEG).json())) for f in frames[5:15]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert any(r["status"] == "dropped" and r["reason"] == "overload" for r in results)


def test_refusals_and_deletion_while_connected(start_server, video) -> None:
    server = start_server(api_token="s3cret")
    good = {"Authorization": "Bearer s3cret"}
    with pytest.raises(InvalidStatus) as caught:
        connect(server.ws_url("/v1/streams/nosuchstream/ingest"), additional_headers=good, open_timeout=10)
    assert caught.value.response.status_code == 404
    sid = httpx.post(server.url("/v1/streams"), json={}, headers=good).json()["id"]
    with pytest.raises(InvalidStatus) as caught:
        connect(server.ws_url(f"/v1/streams/{sid}/ingest"), open_timeout=10)
    assert caught.value.response.status_code == 401
    with connect(server.ws_url(f"/v1/streams/{sid}/ingest?token=s3cret"), open_timeout=10) as ingest:
        ingest.send(encode(video[0]))
        assert receive(ingest, 1)[0]["status"] == "warming"
        assert httpx.delete(server.url(f"/v1/streams/{sid}"), headers=good).status_code == 200
        ingest.send(encode(video[1]))
        answer = receive(ingest, 1)[0]
        assert (answer["status"], answer["code"]) == ("rejected", 404)
        with pytest.raises(ConnectionClosed) as closed:
            ingest.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "stream deleted")


def test_a_server_bug_closes_the_connection_with_1011_and_is_logged(vad_server, video, monkeypatch, caplog) -> None:
    import service.api.ingest as ingest_module

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the server")

    sid = new_stream(vad_server)
    monkeypatch.setattr(ingest_module, "decode_and_submit", broken)
    with caplog.at_level("ERROR", logger="vad.ingest"), \
            connect(vad_server.ws_url(f"/v1/streams/{sid}/ingest"), open_timeout=10) as ingest:
        ingest.send(encode(video[0]))
        with pytest.raises(ConnectionClosed) as closed:
            ingest.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert "a bug in the server" not in closed.value.rcvd.reason  # no internals to the client
    assert any("ingest connection of stream" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_frame_not_scored_in_time_is_answered_504_and_still_counted(start_server, video) -> None:
    server = start_server(extra_inference_latency_ms=800.0, result_timeout_seconds=0.2)
    sid = new_stream(server)
    with connect(server.ws_url(f"/v1/streams/{sid}/ingest"), open_timeout=10) as ingest:
        for frame in video[:5]:
            ingest.send(encode(frame))
        answers = receive(ingest, 5)
    assert [a["status"] for a in answers] == ["warming"] * 4 + ["rejected"]
    assert answers[4]["code"] == 504 and "still queued" in answers[4]["detail"]
    deadline = time.monotonic() + 10
    while httpx.get(server.url(f"/v1/streams/{sid}")).json()["frames_scored"] < 1:  # scored after all
        assert time.monotonic() < deadline
        time.sleep(0.05)
