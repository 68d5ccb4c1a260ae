"""The pipeline under load: cross-stream batching, overload drops, the live-source interface, metrics."""

from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from service.domain import FrameResult, UnsupportedSource
from service.streams import SourceRequest, StreamManager
from tests.integration.test_scoring import evaluator_scores, write_frames
from tests.support.serving import encode, metric_value, running_server

JPEG = {"content-type": "image/jpeg"}


def test_two_streams_are_batched_together_and_scored_apart(start_server, tiny_weights: Path, video,
                                                           tmp_path: Path) -> None:
    # A long batch wait makes the worker wait for the other stream's frame: batches of two.
    server = start_server(max_batch=2, batch_wait_ms=300)
    videos = {"a": video[:12], "b": video[20:32]}
    expected = {k: evaluator_scores(tiny_weights, write_frames(tmp_path / k / "v", v), 12)["score"]
                for k, v in videos.items()}

    def run(key: str) -> list[dict]:
        with server.client() as client:
            sid = client.post("/v1/streams", json={"name": key}).json()["id"]
            return [client.post(f"/v1/streams/{sid}/frames", content=(tmp_path / key / "v" / f"{i:03d}.jpg")
                                .read_bytes(), headers=JPEG).json() for i in range(12)]

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(videos, pool.map(run, videos), strict=True))
    for key, responses in results.items():
        scored = [r["score"] for r in responses if r["status"] == "scored"]
        np.testing.assert_allclose(scored, expected[key], rtol=1e-5, atol=1e-7)  # no cross-stream mix-up
    metrics = server.metrics()
    batches = metric_value(metrics, "vad_inference_batch_frames_count")
    frames = metric_value(metrics, "vad_inference_batch_frames_sum")
    singles = metric_value(metrics, "vad_inference_batch_frames_bucket", {"le": "1.0"})
    assert frames == 16  # 8 scored frames per stream (the start-up warm-up batch is not counted)
    assert singles < batches, "no batch held frames of both streams"


def test_overload_drops_oldest_waiting_frames_with_reason(start_server, video) -> None:
    server = start_server(extra_inference_latency_ms=300, max_pending_per_stream=1, max_batch=1, batch_wait_ms=0)
    with server.client() as client:
        sid = client.post("/v1/streams", json={}).json()["id"]
        for frame in video[:4]:
            assert client.post(f"/v1/streams/{sid}/frames", content=encode(frame), headers=JPEG).json()[
                "status"] == "warming"
    bodies = [encode(f) for f in video[4:14]]

    def post(body: bytes) -> dict:
        r = httpx.post(server.url(f"/v1/streams/{sid}/frames"), content=body, headers=JPEG, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(10) as pool:  # ten frames at once against a model that needs 300 ms each
        results = list(pool.map(post, bodies))
    statuses = [r["status"] for r in results]
    dropped = [r for r in results if r["status"] == "dropped"]
    assert set(statuses) <= {"scored", "dropped"}
    assert dropped and all(r["reason"] == "overload" and r["score"] is None for r in dropped)
    newest = max(results, key=lambda r: r["frame_index"])
    assert newest["status"] == "scored"  # scores stay current: the newest frame is never the one dropped
    info = httpx.get(server.url(f"/v1/streams/{sid}")).json()
    assert info["frames_received"] == 14 and info["frames_pending"] == 0
    assert info["frames_warming"] + info["frames_scored"] + info["frames_dropped"] == 14  # none lost
    assert info["frames_dropped"] == len(dropped)
    assert info["frames_dropped_by_reason"] == {"overload": len(dropped)}
    metrics = server.metrics()
    assert metric_value(metrics, "vad_frames_dropped_total", {"stream": sid, "reason": "overload"}) == len(dropped)
    assert metric_value(metrics, "vad_frames_scored_total", {"stream": sid}) == info["frames_scored"]


class ThreadCamera:
    """A live source as service/sources.py would write one: its own thread calls the manager."""

    def __init__(self, request: SourceRequest, manager: StreamManager, frames: np.ndarray) -> None:
        self.request, self.manager, self.frames = request, manager, frames
        self.results: list[FrameResult] = []
        self.stopped = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)

    def run(self) -> None:
        sid = self.request.stream_id
        sink = self.manager.sink(sid)
        for i, frame in enumerate(self.frames):
            if self.stopped.is_set():
                return
            if i == 8:  # the camera dropped and came back: a new clip starts
                self.manager.set_state(sid, "reconnecting", "connection lost")
                assert self.manager.get(sid).state == "reconnecting"
                self.manager.reset_buffer(sid)
            if i < 10:
                self.results.append(self.manager.submit(sid, frame, 1000.0 + i).result(timeout=30))
            else:  # the same through the one sink adapter, as live sources feed a stream
                self.results.append(sink.submit_frame(frame, 1000.0 + i).result(timeout=30))
        sink.set_state("running")  # not forwarded: the manager moves warming -> running by itself
        self.done.set()


def test_live_source_interface(start_server, video) -> None:
    cameras: list[ThreadCamera] = []

    def factory(request: SourceRequest, manager: StreamManager) -> ThreadCamera:
        if not request.source.startswith("test://"):
            raise UnsupportedSource(f"cannot open {request.source!r}: only test:// here")
        camera = ThreadCamera(request, manager, video[: request.options["frames"]])
        cameras.append(camera)
        return camera

    server = start_server(source_factory=factory)
    r = httpx.post(server.url("/v1/streams"), json={"source": "ftp://x", "options": {"frames": 1}})
    assert r.status_code == 422 and "only test:// here" in r.json()["detail"]
    with connect(server.ws_url("/v1/scores"), open_timeout=10) as feed:
        created = httpx.post(server.url("/v1/streams"), json={"source": "test://cam", "name": "gate",
                                                               "options": {"frames": 14}})
        assert created.status_code == 201 and created.json()["source"] == "test://cam"
        sid = created.json()["id"]
        assert cameras[0].done.wait(60)
        messages = [json.loads(feed.recv(timeout=10)) for _ in range(6)]
    statuses = [r.status for r in cameras[0].results]
    assert statuses == ["warming"] * 4 + ["scored"] * 4 + ["warming"] * 4 + ["scored"] * 2
    assert [r.timestamp for r in cameras[0].results] == [1000.0 + i for i in range(14)]
    # After the reset the smoothing starts again: the first score is its own mean.
    assert cameras[0].results[12].smoothed_score == pytest.approx(cameras[0].results[12].normalized_score)
    assert [m["frame_index"] for m in messages] == [4, 5, 6, 7, 12, 13]
    info = httpx.get(server.url(f"/v1/streams/{sid}")).json()
    assert info["state"] == "running" and info["frames_scored"] == 6 and info["frames_warming"] == 8
    assert httpx.delete(server.url(f"/v1/streams/{sid}")).json()["state"] == "stopped"
    assert cameras[0].stopped.is_set()


def test_metrics_pass_promtool_and_counters_move(start_server, video) -> None:
    server = start_server()
    with server.client() as client:
        sid = client.post("/v1/streams", json={"name": "m"}).json()["id"]
        before = server.metrics()
        with connect(server.ws_url(f"/v1/streams/{sid}/scores"), open_timeout=10) as ws:
            for frame in video[:7]:
                client.post(f"/v1/streams/{sid}/frames", content=encode(frame), headers=JPEG)
            for _ in range(3):
                ws.recv(timeout=10)
            during = server.metrics()
        client.post(f"/v1/streams/{sid}/frames", content=b"junk", headers=JPEG)
        files = [("frames", (f"{i}.jpg", encode(f), "image/jpeg")) for i, f in enumerate(video[:5])]
        assert client.post("/v1/score", files=files).status_code == 200
        after = server.metrics()
    check = subprocess.run(["promtool", "check", "metrics"], input=after, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    s = {"stream": sid}
    assert metric_value(before, "vad_frames_received_total", s) == 0
    assert metric_value(during, "vad_frames_received_total", s) == 7
    assert metric_value(during, "vad_frames_warming_total", s) == 4
    assert metric_value(during, "vad_frames_scored_total", s) == 3
    assert metric_value(during, "vad_websocket_clients") == 1
    assert metric_value(during, "vad_streams", {"state": "running"}) == 1
    assert metric_value(after, "vad_websocket_messages_sent_total") == 3
    assert metric_value(after, "vad_frames_rejected_total", {"reason": "invalid_image"}) == 1
    assert metric_value(after, "vad_stateless_requests_total", {"outcome": "scored"}) == 1
    assert metric_value(after, "vad_inference_batch_frames_sum") == 4
    assert metric_value(after, "vad_frame_latency_seconds_count") == 4
    assert metric_value(after, "vad_queue_depth_frames") == 0
    assert metric_value(after, "vad_ready") == 1
    assert 'weights="tiny.safetensors"' in after and "vad_model_info{" in after
    httpx.delete(server.url(f"/v1/streams/{sid}"))
    gone = server.metrics()
    assert f'stream="{sid}"' not in gone  # per-stream series leave with the stream


def test_shutdown_answers_waiting_frames(service_settings, video) -> None:
    settings = service_settings(extra_inference_latency_ms=500, max_pending_per_stream=4, max_batch=1)
    with running_server(settings) as server:
        manager = server.context.manager
        sid = manager.create().id
        futures = [manager.submit(sid, frame) for frame in video[:9]]
    results = [f.result(timeout=30) for f in futures]  # all answered, none left hanging
    assert [r.status for r in results[:4]] == ["warming"] * 4
    assert all(r.status in ("scored", "dropped") for r in results[4:])
    assert any(r.reason == "shutdown" for r in results[4:])

