"""Live sources through the API: POST /v1/streams {"source": "rtsp://..."} against a real RTSP camera."""

from __future__ import annotations

import functools

import pytest

from service.netguard import parse_networks
from service.settings import SourceSettings
from service.sources import source_factory
from tests.support.rtsp import RtspCamera, wait_for
from tests.support.serving import metric_value

SETTINGS = SourceSettings(
    open_timeout_s=3.0, stall_timeout_s=2.0, backoff_initial_s=0.2, backoff_max_s=1.0,
    allowed_networks=parse_networks("127.0.0.0/8"),
)
LOOPBACK_FACTORY = functools.partial(source_factory, settings=SETTINGS)




def test_live_stream_is_scored_and_survives_a_camera_restart(camera_frames, start_server):
    server = start_server(source_factory=LOOPBACK_FACTORY)
    with RtspCamera(camera_frames, fps=10) as camera, server.client() as client:
        created = client.post("/v1/streams", json={"source": camera.url, "name": "gate", "max_fps": 5})
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]

        def stream() -> dict:
            return client.get(f"/v1/streams/{stream_id}").json()

        assert wait_for(lambda: stream()["frames_scored"] >= 3, 30), stream()
        assert stream()["state"] == "running"
        camera.kill()
        assert wait_for(lambda: stream()["state"] == "reconnecting", 5), stream()
        scored = stream()["frames_scored"]
        camera.start()
        assert wait_for(lambda: stream()["frames_scored"] >= scored + 6, SETTINGS.backoff_max_s + 15), stream()
        assert stream()["state"] == "running"
        metrics = server.metrics()
        assert f'vad_source_reconnects_total{{stream="{stream_id}"}}' in metrics
        assert f'vad_frames_dropped_total{{reason="max_fps",stream="{stream_id}"}}' in metrics
        thinned = metric_value(metrics, "vad_frames_dropped_total", {"stream": stream_id, "reason": "max_fps"})
        by_reason = stream()["frames_dropped_by_reason"]  # the source's drops, before the stream
        assert thinned > 0 and by_reason.get("max_fps", 0) >= thinned, (thinned, by_reason)
        deleted = client.delete(f"/v1/streams/{stream_id}")
        assert deleted.status_code == 200 and deleted.json()["state"] == "stopped"
        gone = server.metrics()
        assert f'vad_source_reconnects_total{{stream="{stream_id}"}}' not in gone
        assert f'stream="{stream_id}"' not in gone  # drops and every other per-stream series too


@pytest.mark.parametrize("source", [
    "file:///etc/passwd",
    "concat:/etc/passwd|/etc/hosts",
    "ftp://example.com/x.mp4",
    "rtsp://admin:hunter2@127.0.0.1:554/cam",
    "rtsp://2130706433/cam",
    "http://169.254.169.254/latest/meta-data/",
    "rtsp://[::ffff:10.0.0.1]/cam",
])
def test_refused_sources_are_422_without_credentials(source, start_server):
    server = start_server(source_factory=functools.partial(source_factory, settings=SourceSettings()))
    with server.client() as client:
        response = client.post("/v1/streams", json={"source": source})
        assert response.status_code == 422, response.text
        assert "hunter2" not in response.text
        assert client.get("/v1/streams").json()["count"] == 0


def test_bad_options_are_422(start_server):
    server = start_server(source_factory=LOOPBACK_FACTORY)
    with server.client() as client:
        for options in ({"max_fps": 0}, {"max_fps": "fast"}, {"colour": "blue"}):
            response = client.post("/v1/streams", json={"source": "rtsp://127.0.0.1:9/cam", "options": options})
            assert response.status_code == 422, (options, response.text)
        for max_fps in (0, -1, "fast", 1000):
            response = client.post("/v1/streams", json={"source": "rtsp://127.0.0.1:9/cam", "max_fps": max_fps})
            assert response.status_code == 422, (max_fps, response.text)


def test_credentials_never_in_stream_responses(camera_frames, start_server, caplog):
    server = start_server(source_factory=LOOPBACK_FACTORY)
    with server.client() as client:
        response = client.post("/v1/streams", json={"source": "rtsp://admin:hunter2@127.0.0.1:9/cam"})
        assert response.status_code == 201
        listed = client.get("/v1/streams").text
        client.delete(f"/v1/streams/{response.json()['id']}")
    assert "hunter2" not in response.text + listed + caplog.text
