"""Heatmap history: the kept frames of GET /heatmap under a count, a per-stream and a total byte budget
("drop-oldest"), their eviction counters and bytes gauge, and the small JPEG copies kept for overlays."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from model.backends import ClipScores
from model.weights import Calibration
from service.domain import FrameResult, HeatmapNotAvailable, StreamNotFound
from service.heatmap import JPEG_QUALITY, RAW_FRAME_MAX_BYTES, KeptFrame, keep_frame, render_heatmap
from service.history import HeatmapHistory, HeatmapRecord
from service.infer import FrameQueue
from service.metrics import ServiceMetrics
from service.models import ModelSlot
from service.score import Scorer
from service.streams import StreamManager
from tests.support.data import TINY
from tests.support.serving import metric_value

S = 32
KB = 1024


def record(index: int, frame_bytes: int, stream_id: str = "a") -> HeatmapRecord:
    """A record whose kept frame has exactly `frame_bytes` bytes (plus a 4 KB float32 error map)."""
    result = FrameResult(stream_id=stream_id, frame_index=index, status="scored", timestamp=0.0, latency_ms=0.0,
                         frame_width=640, frame_height=480)
    kept = KeptFrame(np.zeros(frame_bytes, np.uint8), encoded=True, size=(64, 48))
    return HeatmapRecord(result, np.zeros((S, S), np.float32), kept)


ERRORS = S * S * 4  # bytes of one error map


class Evictions:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str, count: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count


def indices(history: HeatmapHistory, stream_id: str) -> list[int]:
    return [r.result.frame_index for r in history.records(stream_id)]


# --- the container --------------------------------------------------------------------------------


def test_record_bytes_are_the_error_map_and_the_kept_frame() -> None:
    assert record(0, 10 * KB).nbytes == ERRORS + 10 * KB


def test_the_count_bound_rolls_the_oldest_out_without_counting_an_eviction() -> None:
    evictions = Evictions()
    history = HeatmapHistory(3, 10**9, 10**9, evictions)
    for i in range(5):
        history.add("a", record(i, KB))
    assert indices(history, "a") == [2, 3, 4]
    assert history.bytes_kept("a") == history.bytes_kept() == 3 * (ERRORS + KB)
    assert evictions.counts == {}


def test_the_stream_budget_evicts_the_streams_oldest_records() -> None:
    evictions = Evictions()
    size = ERRORS + 100 * KB
    history = HeatmapHistory(16, 3 * size, 10**9, evictions)
    for i in range(10):
        history.add("a", record(i, 100 * KB))
        history.add("b", record(i, 1 * KB, "b"))  # the other stream is not touched by a's budget
        assert history.bytes_kept("a") <= 3 * size
    assert indices(history, "a") == [7, 8, 9]
    assert indices(history, "b") == list(range(10))
    assert evictions.counts == {"stream_budget": 7}
    assert history.bytes_kept() == 3 * size + 10 * (ERRORS + KB)


def test_a_record_above_the_stream_budget_is_kept_alone() -> None:
    evictions = Evictions()
    history = HeatmapHistory(16, 50 * KB, 10**9, evictions)
    history.add("a", record(0, 10 * KB))
    history.add("a", record(1, 10 * KB))
    history.add("a", record(2, 200 * KB))  # the latest scored frame stays available
    assert indices(history, "a") == [2]
    assert evictions.counts == {"stream_budget": 2}
    history.add("a", record(3, 10 * KB))
    assert indices(history, "a") == [3]


def test_the_total_budget_evicts_the_globally_oldest_record_of_any_stream() -> None:
    evictions = Evictions()
    size = ERRORS + 50 * KB
    history = HeatmapHistory(16, 10**9, 5 * size, evictions)
    history.add("a", record(0, 50 * KB))
    history.add("b", record(0, 50 * KB, "b"))
    history.add("a", record(1, 50 * KB))
    history.add("c", record(0, 50 * KB, "c"))
    history.add("b", record(1, 50 * KB, "b"))
    assert history.bytes_kept() == 5 * size and evictions.counts == {}
    history.add("c", record(1, 50 * KB, "c"))  # a0 is the oldest of all
    assert indices(history, "a") == [1]
    history.add("c", record(2, 50 * KB, "c"))  # then b0
    history.add("a", record(2, 50 * KB))  # then a1
    assert (indices(history, "a"), indices(history, "b"), indices(history, "c")) == ([2], [1], [0, 1, 2])
    assert evictions.counts == {"total_budget": 3}
    assert history.bytes_kept() == 5 * size


def test_a_record_above_the_total_budget_evicts_every_other_one_but_stays() -> None:
    evictions = Evictions()
    history = HeatmapHistory(16, 10**9, 100 * KB, evictions)
    for stream in "abc":
        history.add(stream, record(0, 10 * KB, stream))
    history.add("d", record(0, 500 * KB, "d"))
    assert [indices(history, s) for s in "abcd"] == [[], [], [], [0]]
    assert evictions.counts == {"total_budget": 3}
    assert history.bytes_kept() == ERRORS + 500 * KB and len(history) == 1


def test_both_budgets_count_separately() -> None:
    evictions = Evictions()
    size = ERRORS + 10 * KB
    history = HeatmapHistory(100, 4 * size, 6 * size, evictions)
    for i in range(6):
        history.add("a", record(i, 10 * KB))  # a keeps 4: 2 by its budget
    for i in range(4):
        history.add("b", record(i, 10 * KB, "b"))  # total 8 > 6: a's two oldest go
    assert evictions.counts == {"stream_budget": 2, "total_budget": 2}
    assert indices(history, "a") == [4, 5] and indices(history, "b") == [0, 1, 2, 3]


def test_forget_frees_a_streams_bytes_without_counting_evictions() -> None:
    evictions = Evictions()
    history = HeatmapHistory(16, 10**9, 10**9, evictions)
    for i in range(4):
        history.add("a", record(i, 10 * KB))
        history.add("b", record(i, 10 * KB, "b"))
    history.forget("a")
    history.forget("nope")
    assert history.records("a") == [] and history.bytes_kept("a") == 0
    assert history.bytes_kept() == 4 * (ERRORS + 10 * KB) and len(history) == 4
    assert evictions.counts == {}
    history.add("b", record(4, 10 * KB, "b"))
    assert indices(history, "b") == [0, 1, 2, 3, 4]


def test_bytes_stay_consistent_under_a_random_mix() -> None:
    rng = np.random.default_rng(0)
    history = HeatmapHistory(8, 300 * KB, 1000 * KB)
    for i in range(2000):
        stream = "abcde"[int(rng.integers(5))]
        if rng.random() < 0.02:
            history.forget(stream)
        else:
            history.add(stream, record(i, int(rng.integers(1, 120)) * KB, stream))
        kept = {s: history.records(s) for s in "abcde"}
        for s, records in kept.items():
            assert history.bytes_kept(s) == sum(r.nbytes for r in records)
            assert len(records) <= 8
            assert history.bytes_kept(s) <= 300 * KB or len(records) == 1
            assert [r.result.frame_index for r in records] == sorted(r.result.frame_index for r in records)
        assert history.bytes_kept() == sum(history.bytes_kept(s) for s in "abcde")
        assert history.bytes_kept() <= 1000 * KB or len(history) == 1


# --- kept frames ----------------------------------------------------------------------------------


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth random texture (a camera-like image; pure noise is the JPEG worst case)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 40), max(1, width // 40), channels), np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return image.reshape(height, width, channels) if channels > 1 else image.reshape(height, width)


def test_a_small_frame_is_kept_as_it_is() -> None:
    frame = noise(120, 180)
    kept = keep_frame(frame, 1280)
    assert not kept.encoded and kept.data is frame and kept.size == (180, 120)
    assert kept.decode() is frame and kept.nbytes == frame.nbytes


def test_a_4k_frame_is_kept_as_a_small_downscaled_jpeg() -> None:
    frame = noise(2160, 3840)
    kept = keep_frame(frame, 1280)
    assert kept.encoded and kept.size == (1280, 720)
    assert kept.data.dtype == np.uint8 and kept.data.ndim == 1
    assert kept.nbytes < frame.nbytes / 50  # 24.9 MB decoded -> a few hundred KB
    image = kept.decode()
    assert image.shape == (720, 1280, 3)
    reference = cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - reference).mean() < 3  # JPEG quality 85 of a smooth image
    assert JPEG_QUALITY == 85


def test_rgba_frames_lose_alpha_and_gray_frames_stay_gray() -> None:
    bgra = np.concatenate([noise(1080, 1920), np.full((1080, 1920, 1), 7, np.uint8)], axis=2)
    kept = keep_frame(bgra, 1280)
    assert kept.size == (1280, 720) and kept.decode().shape == (720, 1280, 3)
    gray = noise(1080, 1920, channels=1)
    kept = keep_frame(gray, 1280)
    assert kept.size == (1280, 720) and kept.decode().shape == (720, 1280)


def test_portrait_frames_are_bounded_by_their_height() -> None:
    kept = keep_frame(noise(2000, 900), 1000)
    assert kept.size == (450, 1000)


def test_max_side_zero_keeps_the_size_but_still_encodes_large_frames() -> None:
    frame = noise(1080, 1920)
    kept = keep_frame(frame, 0)
    assert kept.encoded and kept.size == (1920, 1080) and kept.nbytes < frame.nbytes / 10
    small = noise(120, 180)
    assert keep_frame(small, 0).data is small


def test_a_small_frame_longer_than_max_side_is_downscaled() -> None:
    frame = noise(100, 400)
    assert frame.nbytes <= RAW_FRAME_MAX_BYTES
    kept = keep_frame(frame, 200)
    assert kept.encoded and kept.size == (200, 50)


def test_an_overlay_of_a_kept_frame_is_rendered_at_the_original_size() -> None:
    frame = noise(2160, 3840)
    kept = keep_frame(frame, 1280)
    png = render_heatmap(np.zeros((S, S), np.float32), (3840, 2160), 1.0, kept.decode(), 0.0)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (2160, 3840, 3)
    assert np.abs(image.astype(int) - frame).mean() < 4  # alpha 0: the frame, scaled back up


# --- the manager: scored frames into the history, metrics, 404s ---------------------------------


def make_manager(metrics: ServiceMetrics, **history: int) -> tuple[StreamManager, FrameQueue]:
    queue = FrameQueue(max_pending_per_stream=100, max_pending_stateless=4)
    calibration = Calibration.from_scores(torch.linspace(0.01, 0.02, 50))
    # The manager reads only the configuration of the slot's runtime: no model is loaded here.
    slot = ModelSlot(name="tiny", path=Path("tiny.safetensors"), runtime=SimpleNamespace(config=TINY), queue=queue,
                     scorer=Scorer(TINY, calibration, 3.0), weights_sha256="0" * 64)
    manager = StreamManager(
        acquire=lambda name: slot, default_slot=lambda: slot, metrics=metrics,
        publish=lambda result: None, on_stream_deleted=metrics.forget_stream, max_streams=4, **history,
    )
    return manager, queue


def scores_for(n: int) -> ClipScores:
    return ClipScores(score=torch.full((n,), 0.015), y=torch.zeros(n, dtype=torch.long),
                      x=torch.zeros(n, dtype=torch.long), mse=torch.zeros(n), errors=torch.rand(n, S, S))


def score_waiting(manager: StreamManager, queue: FrameQueue) -> None:
    """What the inference worker does, with made-up scores."""
    if not len(queue):
        return  # the frame only warmed the ring
    jobs = queue.take_batch(64, 0.0)
    queue.finished(jobs)
    manager.complete_batch(manager.default_slot(), jobs, scores_for(len(jobs)), None)


def test_the_manager_keeps_scored_frames_under_the_stream_budget_and_reports_them() -> None:
    metrics = ServiceMetrics()
    frame_bytes = keep_frame(noise(2160, 3840, seed=1), 1280).nbytes
    budget = 3 * (frame_bytes + ERRORS) + frame_bytes // 2
    manager, queue = make_manager(metrics, heatmap_history=16, heatmap_history_bytes_per_stream=budget,
                                  heatmap_history_bytes_total=10**9, heatmap_frame_max_side=1280)
    sid = manager.create().id
    frames = [noise(2160, 3840, seed=1 + i) for i in range(12)]
    for frame in frames:
        manager.submit(sid, frame)
        score_waiting(manager, queue)
    kept = manager.history.records(sid)
    assert [r.result.frame_index for r in kept] == [9, 10, 11]  # frames 0-3 warmed the ring
    assert all(r.frame.encoded and r.frame.size == (1280, 720) for r in kept)
    assert all((r.result.frame_width, r.result.frame_height) == (3840, 2160) for r in kept)
    assert all(r.errors.dtype == np.float32 and r.errors.shape == (S, S) for r in kept)
    text = metrics.render().decode()
    assert 0 < metric_value(text, "vad_heatmap_history_bytes") <= budget
    assert metric_value(text, "vad_heatmap_history_evicted_total", {"reason": "stream_budget"}) == 5
    assert metric_value(text, "vad_heatmap_history_evicted_total", {"reason": "total_budget"}) == 0
    assert 'vad_heatmap_history_evicted_total{reason="total_budget"} 0.0' in text
    assert manager.heatmap_record(sid).result.frame_index == 11
    assert manager.heatmap_record(sid, 10).result.frame_index == 10
    with pytest.raises(HeatmapNotAvailable, match="frame 8 .* is not among the last 3 scored frames"):
        manager.heatmap_record(sid, 8)
    manager.delete(sid)
    assert metric_value(metrics.render().decode(), "vad_heatmap_history_bytes") == 0
    with pytest.raises(StreamNotFound):
        manager.heatmap_record(sid)


def test_a_frame_scored_after_its_stream_was_deleted_is_not_kept() -> None:
    metrics = ServiceMetrics()
    manager, queue = make_manager(metrics, heatmap_history=16)
    sid = manager.create().id
    for frame in (noise(120, 180, seed=i) for i in range(5)):
        future = manager.submit(sid, frame)
    jobs = queue.take_batch(64, 0.0)
    assert len(jobs) == 1
    assert jobs[0].kept is not None  # made by submit(), not on the inference worker
    manager.delete(sid)  # the job was already taken by the "worker": it completes after the DELETE
    manager.complete_batch(manager.default_slot(), jobs, scores_for(1), None)
    assert future.result(1).status == "scored"
    assert len(manager.history) == 0 and manager.history.bytes_kept() == 0


def test_small_frames_are_kept_exactly() -> None:
    metrics = ServiceMetrics()
    manager, queue = make_manager(metrics, heatmap_history=16)
    sid = manager.create().id
    frames = [noise(120, 180, seed=i) for i in range(6)]
    for frame in frames:
        manager.submit(sid, frame)
        score_waiting(manager, queue)
    kept = manager.history.records(sid)
    assert [r.result.frame_index for r in kept] == [4, 5]
    assert not kept[-1].frame.encoded and kept[-1].frame.decode() is frames[5]


def test_a_stream_whose_frames_were_all_evicted_by_the_total_budget_says_so() -> None:
    metrics = ServiceMetrics()
    manager, queue = make_manager(metrics, heatmap_history=16, heatmap_history_bytes_total=100 * KB)
    a, b = manager.create().id, manager.create().id
    for sid in (a, b):
        for i in range(5):
            manager.submit(sid, noise(120, 180, seed=i))  # 63 KB each, kept raw
            score_waiting(manager, queue)
    assert [r.result.frame_index for r in manager.history.records(b)] == [4]
    with pytest.raises(HeatmapNotAvailable, match="none of the 1 scored frames .* is kept any more"):
        manager.heatmap_record(a)
    text = metrics.render().decode()
    assert metric_value(text, "vad_heatmap_history_evicted_total", {"reason": "total_budget"}) == 1
    assert metric_value(text, "vad_heatmap_history_bytes") == manager.history.bytes_kept(b) < 100 * KB
