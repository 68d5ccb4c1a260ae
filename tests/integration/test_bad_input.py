"""Every bad input gets a clear 4xx (or 503 for a missing model), never a 500 or a traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.serving import RunningServer, encode, metric_value, png_declaring

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture
def stream_id(vad_server: RunningServer) -> str:
    return httpx.post(vad_server.url("/v1/streams"), json={"source": "push"}).json()["id"]


def frames_url(server: RunningServer, sid: str) -> str:
    return server.url(f"/v1/streams/{sid}/frames")


def test_streams_crud_and_limits(start_server) -> None:
    server = start_server(max_streams=2)
    with server.client() as client:
        a = client.post("/v1/streams", json={"source": "push", "name": "door"})
        assert a.status_code == 201 and a.json()["name"] == "door" and a.json()["state"] == "starting"
        b = client.post("/v1/streams", json={})  # source defaults to push
        assert b.status_code == 201 and b.json()["source"] == "push"
        over = client.post("/v1/streams", json={"source": "push"})
        assert over.status_code == 429 and "at most 2 streams" in over.json()["detail"]
        listed = client.get("/v1/streams").json()
        assert listed["count"] == 2 and {s["id"] for s in listed["data"]} == {a.json()["id"], b.json()["id"]}
        deleted = client.delete(f"/v1/streams/{a.json()['id']}")
        assert deleted.status_code == 200 and deleted.json()["state"] == "stopped"
        assert client.get(f"/v1/streams/{a.json()['id']}").status_code == 404
        assert client.delete(f"/v1/streams/{a.json()['id']}").status_code == 404
        assert client.post("/v1/streams", json={"source": "push"}).status_code == 201  # room again


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"source": "push",', "JSON decode error"),  # malformed JSON
        (b'{"source": "push", "colour": 1}', "Extra inputs are not permitted"),
        (b'{"source": ""}', "at least 1 character"),
        (b'{"name": 42}', "valid string"),
        (b"[1, 2]", "valid dictionary"),
    ],
)
def test_malformed_stream_bodies_are_422(vad_server: RunningServer, body: bytes, needle: str) -> None:
    r = httpx.post(vad_server.url("/v1/streams"), content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert needle in r.text


def test_live_source_without_factory_is_422(vad_server: RunningServer) -> None:
    r = httpx.post(vad_server.url("/v1/streams"), json={"source": "rtsp://127.0.0.1:1/cam"})
    assert r.status_code == 422 and "live sources are not supported" in r.json()["detail"]


def test_unknown_stream_is_404(vad_server: RunningServer, video) -> None:
    with vad_server.client() as client:
        for r in (
            client.get("/v1/streams/nope"),
            client.delete("/v1/streams/nope"),
            client.get("/v1/streams/nope/heatmap"),
            client.post("/v1/streams/nope/frames", content=encode(video[0]), headers=JPEG),
        ):
            assert r.status_code == 404 and r.json() == {"detail": "no stream 'nope'"}
    with pytest.raises(InvalidStatus) as caught:
        connect(vad_server.ws_url("/v1/streams/nope/scores"), open_timeout=10)
    assert caught.value.response.status_code == 404


def test_upload_over_size_limit_is_413(vad_server: RunningServer, stream_id: str) -> None:
    limit = vad_server.settings.limits.max_upload_bytes
    big = b"\xff\xd8" + b"\0" * limit  # declared by Content-Length
    r = httpx.post(frames_url(vad_server, stream_id), content=big, headers=JPEG)
    assert r.status_code == 413 and f"above the limit of {limit} bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the server counts what arrives
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    r = httpx.post(frames_url(vad_server, stream_id), content=chunks(), headers=JPEG)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
    metrics = vad_server.metrics()
    assert metric_value(metrics, "vad_frames_rejected_total", {"reason": "too_large"}) >= 2


def test_undecodable_image_is_422(vad_server: RunningServer, stream_id: str, video) -> None:
    url = frames_url(vad_server, stream_id)
    for body in (b"not an image at all", b"", encode(video[0])[:200]):
        r = httpx.post(url, content=body, headers=JPEG)
        assert r.status_code == 422, r.text
        assert "cannot decode" in r.json()["detail"] or "empty body" in r.json()["detail"]
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    r = httpx.post(url, content=gif.getvalue(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 422 and "GIF is not supported" in r.json()["detail"]
    info = httpx.get(vad_server.url(f"/v1/streams/{stream_id}")).json()
    assert info["frames_received"] == 0  # refused uploads are not accepted frames


def test_wrong_content_type_is_415(vad_server: RunningServer, stream_id: str, video) -> None:
    r = httpx.post(frames_url(vad_server, stream_id), content=encode(video[0]), headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "image/jpeg or image/png" in r.json()["detail"]


def test_pixel_bomb_refused_before_decoding(vad_server: RunningServer, stream_id: str) -> None:
    bomb = png_declaring(20000, 20000)
    assert len(bomb) < 200
    r = httpx.post(frames_url(vad_server, stream_id), content=bomb, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    over_cap = png_declaring(1001, 1000)  # just above the test cap of 1,000,000 pixels, below PIL's own
    r = httpx.post(frames_url(vad_server, stream_id), content=over_cap, headers={"content-type": "image/png"})
    assert r.status_code == 413
    assert r.json()["detail"] == "image is 1001x1000 = 1001000 pixels, above the limit of 1000000 pixels"


def test_stateless_score_bad_inputs(vad_server: RunningServer, video) -> None:
    url = vad_server.url("/v1/score")
    five = [("frames", (f"{i}.jpg", encode(f), "image/jpeg")) for i, f in enumerate(video[:5])]
    r = httpx.post(url, files=five[:4])
    assert r.status_code == 422 and "exactly 5 image files" in r.json()["detail"]
    mixed = five[:4] + [("frames", ("4.jpg", encode(video[4][::2, ::2].copy()), "image/jpeg"))]
    r = httpx.post(url, files=mixed)
    assert r.status_code == 422 and "same size" in r.json()["detail"]
    r = httpx.post(url, files=five[:4] + [("frames", ("4.jpg", b"garbage", "image/jpeg"))])
    assert r.status_code == 422 and "cannot decode" in r.json()["detail"]
    r = httpx.post(url, content=encode(video[0]), headers=JPEG)
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = httpx.post(url, content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 422
    r = httpx.post(url, files=five[:4] + [("frames", ("4.png", png_declaring(20000, 20000), "image/png"))])
    assert r.status_code == 413
    big = five[:4] + [("frames", ("4.jpg", b"\0" * (vad_server.settings.limits.max_upload_bytes + 1), "image/jpeg"))]
    r = httpx.post(url, files=big)
    assert r.status_code == 413


def test_bearer_token_on_http_and_websocket(start_server) -> None:
    server = start_server(api_token="s3cret")
    good = {"Authorization": "Bearer s3cret"}
    assert httpx.get(server.url("/healthz")).status_code == 200
    assert httpx.get(server.url("/metrics")).status_code == 200  # metrics_require_token is off
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        r = httpx.get(server.url("/v1/streams"), headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in r.json()["detail"]
    assert httpx.get(server.url("/readyz")).status_code == 401
    assert httpx.post(server.url("/v1/score"), files=[]).status_code == 401
    sid = httpx.post(server.url("/v1/streams"), json={}, headers=good).json()["id"]
    assert httpx.get(server.url(f"/v1/streams/{sid}/heatmap")).status_code == 401
    with pytest.raises(InvalidStatus) as caught:
        connect(server.ws_url(f"/v1/streams/{sid}/scores"), open_timeout=10)
    assert caught.value.response.status_code == 401
    with connect(server.ws_url(f"/v1/streams/{sid}/scores"), additional_headers=good, open_timeout=10):
        pass
    with connect(server.ws_url("/v1/scores?token=s3cret"), open_timeout=10):
        pass


def test_metrics_token_can_be_required(start_server) -> None:
    server = start_server(api_token="s3cret", metrics_require_token=True)
    assert httpx.get(server.url("/metrics")).status_code == 401
    r = httpx.get(server.url("/metrics"), headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and "vad_ready 1.0" in r.text
    assert httpx.get(server.url("/healthz")).status_code == 200


def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x00" * 100)
    return path


def _mismatched(tmp_path: Path, tiny_weights: Path) -> Path:
    from safetensors import safe_open

    with safe_open(str(tiny_weights), framework="pt") as handle:
        metadata = handle.metadata()
    path = tmp_path / "mismatched.safetensors"
    save_file({"encoder.weight": torch.zeros(3)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp, w: tmp / "missing.safetensors", "no such weights file"),
        (lambda tmp, w: _corrupt(tmp), "not a readable safetensors file"),
        (_mismatched, "tensors do not match its configuration"),
    ],
    ids=["missing", "corrupt", "mismatched"],
)
def test_unusable_weights_keep_readyz_503(start_server, tmp_path: Path, tiny_weights: Path, make, needle, video) -> None:
    server = start_server(weights=make(tmp_path, tiny_weights))
    assert httpx.get(server.url("/healthz")).status_code == 200
    ready = httpx.get(server.url("/readyz"))
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not ready" and needle in body["reason"]
    # A stream needs its model: creating one says why it cannot be scored yet.
    r = httpx.post(server.url("/v1/streams"), json={})
    assert r.status_code == 503 and needle in r.json()["detail"]
    assert httpx.get(server.url("/v1/models")).json()["data"][0]["status"] == "error"
    files = [("frames", (f"{i}.jpg", encode(f), "image/jpeg")) for i, f in enumerate(video[:5])]
    assert httpx.post(server.url("/v1/score"), files=files).status_code == 503
    metrics = server.metrics()
    assert metric_value(metrics, "vad_ready") == 0.0
    assert 'loaded="false"' in metrics


def test_errors_are_json_not_tracebacks(vad_server: RunningServer) -> None:
    r = httpx.get(vad_server.url("/v1/streams/x/heatmap"), params={"scale": "rainbow"})
    assert r.status_code == 422 and "Traceback" not in r.text
    assert json.loads(r.text)["detail"]


def test_docs_and_openapi_need_no_token(start_server) -> None:
    server = start_server(api_token="s3cret")
    assert httpx.get(server.url("/docs")).status_code == 200
    spec = httpx.get(server.url("/openapi.json")).json()
    paths = spec["paths"]
    assert {"/v1/streams", "/v1/streams/{stream_id}", "/v1/streams/{stream_id}/frames",
            "/v1/streams/{stream_id}/heatmap", "/v1/score", "/metrics", "/healthz", "/readyz"} <= set(paths)
    assert "image/jpeg" in paths["/v1/streams/{stream_id}/frames"]["post"]["requestBody"]["content"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
