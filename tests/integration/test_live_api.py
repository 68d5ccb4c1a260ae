"""Live sources through a real `vad serve` process: SIGTERM with live streams and WebSocket feeds, a
camera that accepts and never answers, a slow model behind a fast camera, and camera credentials.

The servers are real subprocesses (`python -m service.cli serve`) on 127.0.0.1 with the tiny
weights; the camera is the GStreamer RTSP test server (tests/support/rtsp.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.infer import FrameQueue, Job
from tests.support.rtsp import RtspCamera, wait_for
from tests.support.serving import encode, metric_value

ROOT = Path(__file__).resolve().parents[2]
JPEG = {"content-type": "image/jpeg"}
PASSWORD = "hunter2"
WRONG_PASSWORD = "swordfish9"
MODEL_LATENCY_MS = 200.0  # --extra-inference-latency-ms of the slow server
CAMERA_FPS = 25
OPEN_TIMEOUT_S = 2.0  # VAD_SOURCE_OPEN_TIMEOUT_S of the servers here




def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`vad serve` in a subprocess; stdout and stderr go to `log_path` (read with `.log()`)."""

    def __init__(self, weights: Path, log_path: Path, *flags: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "VAD_ALLOWED_SOURCE_NETWORKS": "127.0.0.0/8",
            "VAD_SOURCE_OPEN_TIMEOUT_S": str(OPEN_TIMEOUT_S),
            "VAD_SOURCE_STALL_TIMEOUT_S": "2",
            "VAD_SOURCE_BACKOFF_INITIAL_S": "0.2",
            "VAD_SOURCE_BACKOFF_MAX_S": "1",
        }
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--weights", str(weights), "--port", str(self.port),
             "--host", "127.0.0.1", "--device", "cpu", "--backend", "torch", "--torch-threads", "1", "--log-level", "info",
             *flags],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url("/readyz"), timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "vad serve did not become ready:\n" + self.log()
            time.sleep(0.1)
        self.client = httpx.Client(base_url=self.url(""), timeout=10.0)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def slow_server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory, camera_frames: Path
                ) -> Iterator[ServeProcess]:
    """One `vad serve` whose model takes 200 ms more per batch, shared by this module's tests 2-4."""
    server = ServeProcess(tiny_weights, tmp_path_factory.mktemp("serve") / "slow.log",
                          "--extra-inference-latency-ms", str(MODEL_LATENCY_MS))
    try:
        yield server
    finally:
        server.close()


def frames(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)) for _ in range(count)]


def close_code(ws: ClientConnection, timeout: float) -> int | None:
    """Read until the server closes; the code it sent (None: no close frame received)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None
        except TimeoutError:
            break
    raise AssertionError("the server did not close the WebSocket")


def camera_connections(camera: RtspCamera) -> list:
    assert camera.process is not None
    return [c for c in psutil.Process(camera.process.pid).net_connections("tcp")
            if c.status == psutil.CONN_ESTABLISHED]


def camera_answers(camera: RtspCamera) -> bool:
    """A fresh RTSP client can open the camera and decode one frame."""
    import av

    with av.open(camera.url, options={"rtsp_transport": "tcp"}, timeout=(5.0, 5.0)) as container:
        return next(container.decode(video=0), None) is not None


# --- 1. SIGTERM ------------------------------------------------------------------------------------


def test_sigterm_with_live_stream_and_websockets(tiny_weights, camera_frames, tmp_path) -> None:
    with RtspCamera(camera_frames, fps=10) as camera:
        server = ServeProcess(tiny_weights, tmp_path / "serve.log")
        try:
            live = server.client.post("/v1/streams", json={"source": camera.url, "name": "cam", "max_fps": 5})
            assert live.status_code == 201, live.text
            live_id = live.json()["id"]
            push_id = server.client.post("/v1/streams", json={"name": "push"}).json()["id"]
            everything = connect(server.ws_url("/v1/scores"), open_timeout=10)
            only_live = connect(server.ws_url(f"/v1/streams/{live_id}/scores"), open_timeout=10)
            ingest = connect(server.ws_url(f"/v1/streams/{push_id}/ingest"), open_timeout=10)
            with everything, only_live, ingest:
                for body in frames(6):  # the push stream gets scored too
                    assert server.client.post(f"/v1/streams/{push_id}/frames", content=body,
                                              headers=JPEG).status_code == 200
                ingest.send(frames(1)[0])  # and an ingest connection is open and working
                assert json.loads(ingest.recv(timeout=20))["status"] == "scored"
                seen: set[str] = set()
                deadline = time.monotonic() + 20
                while seen != {live_id, push_id}:
                    assert time.monotonic() < deadline, f"scores did not flow: {seen}\n{server.log()}"
                    seen.add(json.loads(everything.recv(timeout=20))["stream_id"])
                assert json.loads(only_live.recv(timeout=20))["stream_id"] == live_id
                assert camera_connections(camera), "the server is not connected to the camera"
                children = psutil.Process(server.process.pid).children(recursive=True)

                signalled = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                codes = (close_code(everything, 10), close_code(only_live, 10), close_code(ingest, 10))
                try:
                    returncode = server.process.wait(10)
                except subprocess.TimeoutExpired:
                    pytest.fail("vad serve still runs 10 s after SIGTERM:\n" + server.log())
                exit_s = time.monotonic() - signalled
            print(f"exit {exit_s:.2f} s after SIGTERM; close codes {codes}")
            assert returncode == 0, server.log()
            assert codes == (1001, 1001, 1001), server.log()
            assert exit_s < 10
            assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
            assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == server.process.pid]
            # The camera lost its client and still serves new ones.
            assert camera.process is not None and camera.process.poll() is None
            assert wait_for(lambda: not camera_connections(camera), 5), camera_connections(camera)
            assert camera_answers(camera)
        finally:
            server.close()


# --- 2. A camera that accepts and never answers -----------------------------------------------------


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that accepts connections and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


def timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def test_silent_camera_does_not_block_the_api(slow_server: ServeProcess) -> None:
    client = slow_server.client
    push_id = client.post("/v1/streams", json={"name": "push"}).json()["id"]
    body = frames(1)[0]
    with black_hole() as port:
        took, created = timed(lambda: client.post("/v1/streams", json={"source": f"rtsp://127.0.0.1:{port}/x"}))
        assert created.status_code == 201, created.text
        assert took < 1.0, took
        stream_id = created.json()["id"]
        started = time.monotonic()
        slowest = 0.0
        while True:
            for call in (
                lambda: client.get("/healthz"),
                lambda: client.get("/v1/streams"),
                lambda: client.post(f"/v1/streams/{push_id}/frames", content=body, headers=JPEG),
            ):
                took, response = timed(call)
                assert response.status_code == 200, response.text
                slowest = max(slowest, took)
            state = client.get(f"/v1/streams/{stream_id}").json()
            if state["state"] in ("reconnecting", "failed"):
                break
            assert time.monotonic() - started < OPEN_TIMEOUT_S + 3, state
            time.sleep(0.05)
        print(f"{state['state']} after {time.monotonic() - started:.2f} s ({state['state_reason']}); "
              f"slowest other call {slowest:.3f} s")
        assert slowest < 1.0
        assert client.delete(f"/v1/streams/{stream_id}").status_code == 200
    client.delete(f"/v1/streams/{push_id}")


# --- 3. A slow model behind a fast camera ----------------------------------------------------------


def test_slow_model_scores_fresh_frames_and_counts_drops(slow_server: ServeProcess, camera_frames) -> None:
    client = slow_server.client
    with RtspCamera(camera_frames, fps=CAMERA_FPS) as camera:
        stream_id = client.post("/v1/streams", json={"source": camera.url, "name": "fast"}).json()["id"]
        ages: list[float] = []
        latencies: list[float] = []
        with connect(slow_server.ws_url(f"/v1/streams/{stream_id}/scores"), open_timeout=10) as ws:
            json.loads(ws.recv(timeout=20))  # scores flow; warm-up over
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                message = json.loads(ws.recv(timeout=10))
                ages.append(time.time() - message["timestamp"])
                latencies.append(message["latency_ms"])
        metrics = httpx.get(slow_server.url("/metrics"), timeout=10).text
        assert client.delete(f"/v1/streams/{stream_id}").status_code == 200
    # Deleting a stream whose frames wait for the model must not stop the inference worker.
    time.sleep(0.3)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    dropped = {reason: metric_value(metrics, "vad_frames_dropped_total", {"stream": stream_id, "reason": reason})
               for reason in ("stale", "overload")}
    p90_age = statistics.quantiles(ages, n=10)[-1] * 1000
    p90_latency = statistics.quantiles(latencies, n=10)[-1]
    print(f"{len(ages)} scored in 5 s; frame age p50 {statistics.median(ages) * 1000:.0f} ms p90 {p90_age:.0f} ms "
          f"max {max(ages) * 1000:.0f} ms; latency_ms p50 {statistics.median(latencies):.0f} p90 {p90_latency:.0f}; "
          f"dropped {dropped}")
    assert len(ages) >= 5
    frame_ms = 1000 / CAMERA_FPS
    # latency_ms (submit -> score): the batch already running (<= one model latency) plus its own.
    assert p90_latency < 2 * MODEL_LATENCY_MS + 3 * frame_ms + 250
    # Age (decode -> WebSocket receipt) adds the wait in the source's one-frame mailbox while the
    # source waits for a result (<= one batch) and a few frame intervals.
    assert p90_age < 3 * MODEL_LATENCY_MS + 3 * frame_ms + 400
    assert dropped["stale"] + dropped["overload"] > 0


def test_deleting_a_stream_while_the_worker_fills_a_batch_keeps_it_waiting() -> None:
    """Regression: take_batch returned [] (= "queue closed") when a DELETE removed every waiting job
    during the batch-fill wait, and the inference worker ended silently (/readyz 503 from then on)."""
    queue = FrameQueue(max_pending_per_stream=2, max_pending_stateless=16)
    for stream in ("other", "s"):  # two active producers: the worker waits for a second clip
        queue.put(Job(stream_id=stream, frame_index=0, clip=np.zeros(1, np.float32),
                      frame=np.zeros((2, 2, 3), np.uint8), timestamp=0.0, received_at=0.0, epoch=0,
                      frames_buffered=0))
        if stream == "other":
            assert len(queue.take_batch(1, 0.0)) == 1
    taken: list[list[Job]] = []
    worker = threading.Thread(target=lambda: taken.append(queue.take_batch(8, 0.5)), daemon=True)
    worker.start()
    time.sleep(0.1)  # the worker holds the first job's place and waits for the batch to fill
    assert len(queue.remove_stream("s")) == 1
    worker.join(1.0)
    assert worker.is_alive() and not taken  # still waiting for work, not "closed"
    queue.close()
    worker.join(2.0)
    assert taken == [[]]


# --- 4. Credentials ---------------------------------------------------------------------------------


def test_camera_password_never_leaks(slow_server: ServeProcess, camera_frames) -> None:
    client = slow_server.client
    with RtspCamera(camera_frames, fps=10, user="admin", password=PASSWORD) as camera:
        good = client.post("/v1/streams", json={"source": camera.url_with_credentials("admin", PASSWORD),
                                                "name": "locked"})
        bad = client.post("/v1/streams", json={"source": camera.url_with_credentials("admin", WRONG_PASSWORD)})
        assert good.status_code == bad.status_code == 201, good.text + bad.text
        good_id, bad_id = good.json()["id"], bad.json()["id"]
        texts = [good.text, bad.text]
        assert wait_for(lambda: client.get(f"/v1/streams/{good_id}").json()["frames_scored"] >= 1, 20), \
            client.get(f"/v1/streams/{good_id}").text + slow_server.log()[-6000:]
        assert wait_for(lambda: client.get(f"/v1/streams/{bad_id}").json()["state"] in ("reconnecting", "failed"),
                        10), client.get(f"/v1/streams/{bad_id}").text
        texts += [client.get("/v1/streams").text, client.get(f"/v1/streams/{good_id}").text,
                  client.get(f"/v1/streams/{bad_id}").text, httpx.get(slow_server.url("/metrics"), timeout=10).text]
        with connect(slow_server.ws_url(f"/v1/streams/{good_id}/scores"), open_timeout=10) as ws:
            texts.append(ws.recv(timeout=20))
        texts += [client.delete(f"/v1/streams/{good_id}").text, client.delete(f"/v1/streams/{bad_id}").text]
    log = slow_server.log()
    assert "401" in log or "Unauthorized" in log or "unauthorized" in log.lower(), log[-2000:]
    for text in [*texts, log]:
        assert PASSWORD not in text and WRONG_PASSWORD not in text
