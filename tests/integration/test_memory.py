"""Memory per stream is bounded whatever the frame size: 4K frames pushed into a real server keep at most
`heatmap_history_bytes_per_stream` of history (a small JPEG copy per frame, read from /metrics), the
heatmap is still a PNG of the original size with an overlay, and an evicted frame answers 404.
RSS itself is measured by bench/memory.py, not here (too noisy for a test)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from service.settings import LimitSettings
from tests.support.serving import metric_value, png_declaring

WIDTH, HEIGHT = 3840, 2160
PNG = {"content-type": "image/png"}
BUDGET = 64 * 1024  # the smallest per-stream budget allowed


def frame_4k(shade: int) -> np.ndarray:
    """A 4K UHD BGR frame of a few flat areas: a small PNG to upload, a small JPEG to keep."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    frame[:, : WIDTH // 2] = (shade, 40, 200)
    frame[:, WIDTH // 2:] = (20, 220, shade)
    frame[HEIGHT // 4: HEIGHT // 2, WIDTH // 8: WIDTH // 4] = 255
    return frame


def png(frame: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", frame)
    assert ok
    return data.tobytes()


def test_4k_frames_keep_a_bounded_history_and_full_size_heatmaps(start_server) -> None:
    default_cap = LimitSettings.model_fields["max_pixels"].default
    assert default_cap == WIDTH * HEIGHT  # 4K UHD is the largest frame accepted by default
    server = start_server(max_pixels=default_cap, max_upload_bytes=8 * 1024 * 1024,
                          heatmap_history_bytes_per_stream=BUDGET)
    frames = [frame_4k(shade) for shade in (0, 60, 120, 180)]
    bodies = [png(f) for f in frames]
    with server.client() as client:
        sid = client.post("/v1/streams", json={"source": "push"}).json()["id"]
        too_big = client.post(f"/v1/streams/{sid}/frames", content=png_declaring(4096, 4096), headers=PNG)
        assert too_big.status_code == 413 and f"above the limit of {default_cap} pixels" in too_big.json()["detail"]
        results = []
        for i in range(12):
            r = client.post(f"/v1/streams/{sid}/frames", content=bodies[i % 4], headers=PNG)
            assert r.status_code == 200, r.text
            results.append(r.json())
        assert [r["status"] for r in results] == ["warming"] * 4 + ["scored"] * 8
        assert {(r["frame_width"], r["frame_height"]) for r in results} == {(WIDTH, HEIGHT)}

        text = server.metrics()
        kept = metric_value(text, "vad_heatmap_history_bytes")
        evicted = metric_value(text, "vad_heatmap_history_evicted_total", {"reason": "stream_budget"})
        assert 0 < kept <= BUDGET
        assert evicted > 0  # 8 scored frames do not all fit in 64 KB
        assert metric_value(text, "vad_heatmap_history_evicted_total", {"reason": "total_budget"}) == 0
        assert server.context.manager.history.bytes_kept(sid) == kept

        latest = client.get(f"/v1/streams/{sid}/heatmap")
        overlay = client.get(f"/v1/streams/{sid}/heatmap", params={"overlay": "true", "alpha": 0.0})
        oldest = client.get(f"/v1/streams/{sid}/heatmap", params={"frame_index": 4})
        for response in (latest, overlay):
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert response.headers["x-frame-index"] == "11"
            image = Image.open(io.BytesIO(response.content))
            assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
        assert oldest.status_code == 404 and "not among the last" in oldest.json()["detail"]

        # alpha 0: the overlay is the frame itself, kept as a 1280x720 JPEG and scaled back up
        shown = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
        sent = frames[11 % 4]
        assert np.abs(shown.astype(int) - sent).mean() < 3
        for y, x in ((HEIGHT // 2 + 200, 100), (100, WIDTH - 100), (3 * HEIGHT // 8, 3 * WIDTH // 16)):
            assert np.abs(shown[y, x].astype(int) - sent[y, x]).max() <= 8

        assert client.delete(f"/v1/streams/{sid}").status_code == 200
        assert metric_value(server.metrics(), "vad_heatmap_history_bytes") == 0
