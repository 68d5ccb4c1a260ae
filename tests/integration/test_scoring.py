"""Scores served over HTTP match the evaluator's (same weights, same frames, same preprocessing)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from model.backends import make_backend, score_clips
from model.data import list_videos, to_model_range
from model.evaluate import causal_protocol
from model.weights import load_weights
from tests.support.serving import RunningServer, encode

JPEG = {"content-type": "image/jpeg"}


def evaluator_scores(weights_path: Path, frame_dir: Path, count: int) -> dict[str, np.ndarray]:
    """What `vad evaluate` computes for the first `count` frames of a frame folder."""
    weights = load_weights(weights_path)
    cfg = weights.config
    video = next(v for v in list_videos(frame_dir.parent) if v.source == frame_dir)
    video = type(video)(video.name, frame_paths=video.frame_paths[:count])
    frames = video.read(cfg)  # read_image + resize_frame, as the evaluator does
    stacks = np.stack([frames[t - cfg.frames + 1 : t + 1] for t in range(cfg.frames - 1, len(frames))])
    clips = to_model_range(stacks)
    b, t, c, h, w = clips.shape
    scores = score_clips(make_backend(weights.model), torch.from_numpy(clips.reshape(b, t * c, h, w)))
    raw = scores.score.numpy().astype(np.float64)
    return {
        "score": raw,
        "normalized": causal_protocol(raw, weights.calibration, window=1),
        "smoothed": causal_protocol(raw, weights.calibration),
        "y": scores.y.numpy(),
        "x": scores.x.numpy(),
        "errors": scores.errors.numpy(),
    }


def write_frames(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        (folder / f"{i:03d}.jpg").write_bytes(encode(frame))
    return folder


def push_files(server: RunningServer, files: list[Path], name: str) -> tuple[str, list[dict]]:
    with server.client() as client:
        stream = client.post("/v1/streams", json={"source": "push", "name": name}).json()
        results = []
        for path in files:
            r = client.post(f"/v1/streams/{stream['id']}/frames", content=path.read_bytes(), headers=JPEG)
            assert r.status_code == 200, r.text
            results.append(r.json())
    return stream["id"], results


def check_parity(results: list[dict], expected: dict[str, np.ndarray], frame_size: tuple[int, int],
                 image_size: int, patch_size: int) -> None:
    assert [r["status"] for r in results[:4]] == ["warming"] * 4
    scored = results[4:]
    assert all(r["status"] == "scored" for r in scored)
    assert [r["frame_index"] for r in scored] == list(range(4, len(results)))
    np.testing.assert_allclose([r["score"] for r in scored], expected["score"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([r["normalized_score"] for r in scored], expected["normalized"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([r["smoothed_score"] for r in scored], expected["smoothed"], rtol=1e-5, atol=1e-5)
    width, height = frame_size
    for r, y, x, smoothed in zip(scored, expected["y"], expected["x"], expected["smoothed"], strict=True):
        assert r["is_anomaly"] == (smoothed >= r["threshold"])
        assert r["patch"] == {
            "x": round(x * width / image_size), "y": round(y * height / image_size),
            "w": round(patch_size * width / image_size), "h": round(patch_size * height / image_size),
        }
        assert (r["frame_width"], r["frame_height"]) == frame_size


def test_push_scoring_matches_evaluator(vad_server: RunningServer, tiny_weights: Path, tiny_config, video,
                                        tmp_path: Path) -> None:
    folder = write_frames(tmp_path / "frames" / "01", video[:16])
    expected = evaluator_scores(tiny_weights, folder, 16)
    stream_id, results = push_files(vad_server, sorted(folder.iterdir()), "synthetic")
    check_parity(results, expected, (180, 120), tiny_config.image_size, tiny_config.patch_size)
    with vad_server.client() as client:
        info = client.get(f"/v1/streams/{stream_id}").json()
    assert info["state"] == "running"
    assert (info["frames_received"], info["frames_warming"], info["frames_scored"], info["frames_dropped"]) == (
        16, 4, 12, 0)


def test_ped2_frames_at_real_size_match_evaluator(vad_server: RunningServer, tiny_weights: Path, tiny_config,
                                                  ped2_root: Path) -> None:
    folder = ped2_root / "testing" / "frames" / "01"
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")[:10]
    expected = evaluator_scores(tiny_weights, folder, 10)
    stream_id, results = push_files(vad_server, files, "ped2-01")  # the very bytes the evaluator reads
    check_parity(results, expected, (360, 240), tiny_config.image_size, tiny_config.patch_size)
    with vad_server.client() as client:
        png = client.get(f"/v1/streams/{stream_id}/heatmap")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (360, 240)


def test_heatmap_sizes_overlay_and_history(vad_server: RunningServer, video) -> None:
    with vad_server.client() as client:
        sid = client.post("/v1/streams", json={"source": "push"}).json()["id"]
        missing = client.get(f"/v1/streams/{sid}/heatmap")
        assert missing.status_code == 404 and "no scored frame yet" in missing.json()["detail"]
        for frame in video[:8]:
            client.post(f"/v1/streams/{sid}/frames", content=encode(frame), headers=JPEG)
        latest = client.get(f"/v1/streams/{sid}/heatmap")
        overlay = client.get(f"/v1/streams/{sid}/heatmap", params={"overlay": "true"})
        older = client.get(f"/v1/streams/{sid}/heatmap", params={"frame_index": 5, "scale": "frame"})
        gone = client.get(f"/v1/streams/{sid}/heatmap", params={"frame_index": 2})
        bad = client.get(f"/v1/streams/{sid}/heatmap", params={"frame_index": -1})
    for response in (latest, overlay, older):
        assert response.status_code == 200
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "PNG" and image.size == (180, 120)
    assert latest.headers["x-frame-index"] == "7" and older.headers["x-frame-index"] == "5"
    assert latest.content != overlay.content
    # overlay = half the frame (as the server decoded it) + half the plain heatmap
    plain = cv2.imdecode(np.frombuffer(latest.content, np.uint8), cv2.IMREAD_COLOR)
    frame = cv2.imdecode(np.frombuffer(encode(video[7]), np.uint8), cv2.IMREAD_COLOR)
    blended = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(blended, cv2.addWeighted(frame, 0.5, plain, 0.5, 0.0))
    assert gone.status_code == 404 and "not among the last" in gone.json()["detail"]
    assert bad.status_code == 422


def test_frame_size_change_resets_buffer(vad_server: RunningServer, video) -> None:
    small = video[:, ::2, ::2].copy()  # 90x60
    with vad_server.client() as client:
        sid = client.post("/v1/streams", json={"source": "push"}).json()["id"]
        first = [client.post(f"/v1/streams/{sid}/frames", content=encode(f), headers=JPEG).json() for f in video[:5]]
        after = [client.post(f"/v1/streams/{sid}/frames", content=encode(f), headers=JPEG).json() for f in small[5:10]]
        state_during = client.get(f"/v1/streams/{sid}").json()
        heatmap = client.get(f"/v1/streams/{sid}/heatmap")
    assert first[-1]["status"] == "scored"
    assert after[0]["status"] == "warming" and "frame size changed from 180x120 to 90x60" in after[0]["reason"]
    assert [r["status"] for r in after] == ["warming"] * 4 + ["scored"]
    assert after[-1]["frame_width"] == 90 and after[-1]["smoothed_score"] == pytest.approx(after[-1]["normalized_score"])
    assert state_during["state"] == "running"
    assert Image.open(io.BytesIO(heatmap.content)).size == (90, 60)


def test_a_timestamp_gap_in_a_pushed_stream_resets_buffer(vad_server: RunningServer, video) -> None:
    """Another clip pushed into the same stream (its timestamps go back, or jump ahead by more than
    max_gap_seconds, default 5 s) starts a new clip instead of mixing both in one."""

    def push(client, sid: str, frames, times: list[float]) -> list[dict]:
        return [client.post(f"/v1/streams/{sid}/frames", params={"timestamp": ts}, content=encode(f),
                            headers=JPEG).json() for f, ts in zip(frames, times, strict=True)]

    with vad_server.client() as client:
        sid = client.post("/v1/streams", json={"source": "push"}).json()["id"]
        first = push(client, sid, video[:6], [100.0 + 0.1 * i for i in range(6)])
        back = push(client, sid, video[20:26], [50.0 + 0.1 * i for i in range(6)])  # an older clip
        ahead = push(client, sid, video[:6], [80.0 + 0.1 * i for i in range(6)])  # 30 s later
        close = push(client, sid, video[6:8], [84.5 + 0.1 * i for i in range(2)])  # 4 s later: same clip
    assert [r["status"] for r in first] == ["warming"] * 4 + ["scored"] * 2
    for rows, gap in ((back, "from 100.500 to 50.000"), (ahead, "from 50.500 to 80.000")):
        assert [r["status"] for r in rows] == ["warming"] * 4 + ["scored"] * 2
        assert f"timestamp jumped {gap}" in rows[0]["reason"] and "buffer reset" in rows[0]["reason"]
        # The smoothing starts again with the new clip.
        assert rows[4]["smoothed_score"] == pytest.approx(rows[4]["normalized_score"])
    assert [r["status"] for r in close] == ["scored", "scored"] and close[0]["reason"] is None


def test_stateless_score_matches_stream_and_returns_heatmap(vad_server: RunningServer, video) -> None:
    images = [encode(f, ".png") for f in video[10:15]]
    files = [("frames", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    with vad_server.client() as client:
        sid = client.post("/v1/streams", json={"source": "push"}).json()["id"]
        pushed = [client.post(f"/v1/streams/{sid}/frames", content=d, headers={"content-type": "image/png"}).json()
                  for d in images]
        r = client.post("/v1/score", files=files, params={"heatmap": "true", "overlay": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stream_id"] is None and body["status"] == "scored"
    assert body["score"] == pytest.approx(pushed[-1]["score"], rel=1e-5)
    assert body["normalized_score"] == pytest.approx(pushed[-1]["normalized_score"], rel=1e-5)
    assert body["smoothed_score"] == body["normalized_score"]
    assert body["patch"] == pushed[-1]["patch"]
    image = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert image.format == "PNG" and image.size == (180, 120)
