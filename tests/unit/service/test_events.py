"""The events stage: opening, hysteresis, release, cooldown, splitting, resets; and the event media."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from service.domain import FrameResult, Patch
from service.events import EventEngine, EventParams
from service.eventtypes import ChangeKind, EndReason
from service.heatmap import keep_frame
from service.media import MediaWriter, write_media

FPS = 25.0
PARAMS = EventParams(min_frames=3, hysteresis=1.0, release_frames=4, cooldown_seconds=2.0, max_seconds=10.0,
                     pre_roll_seconds=0.2, clip_max_seconds=60.0)


def result(index: int, z: float, threshold: float = 4.0, alarms: bool = True, patch=(10, 10, 16, 16)) -> FrameResult:
    return FrameResult(
        stream_id="s1", frame_index=index, status="scored", timestamp=1000.0 + index / FPS, latency_ms=1.0,
        frame_width=160, frame_height=120, score=0.01, normalized_score=z, smoothed_score=z, threshold=threshold,
        is_anomaly=alarms and z >= threshold, patch=Patch(*patch), calibration="model", threshold_score=0.02,
    )


class Recorder:
    def __init__(self) -> None:
        self.changes = []

    def __call__(self, change, media) -> None:  # noqa: ANN001
        self.changes.append((change, media))

    def kinds(self) -> list[tuple[str, str | None]]:
        return [(c.kind.value, c.event.end_reason) for c, _ in self.changes]


def run(scores: list[float], params: EventParams = PARAMS, start: int = 0, epoch: int = 0,
        engine: EventEngine | None = None, **kwargs) -> tuple[EventEngine, Recorder]:  # noqa: ANN003
    recorder = Recorder()
    if engine is None:
        engine = EventEngine(params, 1 << 20, recorder)
        engine.add_stream("s1", "lobby", "ped2-lite")
    else:
        engine.on_change = recorder
    frame = np.full((120, 160, 3), 90, np.uint8)
    kept = keep_frame(frame, 1280)
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    for i, z in enumerate(scores):
        engine.observe(result(start + i, z, **kwargs), epoch, np.zeros((32, 32), np.float32), kept, jpeg)
    return engine, recorder


def test_an_event_opens_after_min_frames_follows_its_peak_and_releases_with_hysteresis() -> None:
    scores = [0, 5, 5, 0, 5, 5, 6, 9, 7, 3.5, 3.5, 3.2, 2, 2, 2, 2, 0, 0]
    _, rec = run(scores)
    # The peak rose within a second of the start: no "update" before the end, which carries the peak.
    assert rec.kinds() == [("start", None), ("end", EndReason.RELEASED)]
    start, end = rec.changes[0][0].event, rec.changes[-1][0].event
    assert start.start_frame == 4  # the first frame of the run of three (frames 1-2 were too short a run)
    assert start.started_at == pytest.approx(1000 + 4 / FPS)
    # 3.5 and 3.2 stay above the exit threshold 3.0; four frames below it release the event.
    assert end.end_frame == 11 and end.ended_at == pytest.approx(1000 + 11 / FPS)
    assert end.peak_score == 9 and end.peak_frame == 7 and end.frames_above == 5
    assert end.box is not None and (end.box.x, end.box.y, end.box.w, end.box.h) == (10, 10, 16, 16)
    media = rec.changes[-1][1]
    assert media.peak_frame is not None and media.frame_size == (160, 120)
    # From the pre-roll (0.2 s: 5 frames before frame 4) to the end; the frames awaiting the release are left out.
    assert [f.index for f in media.clip][0] == 0 and [f.index for f in media.clip][-1] == 11
    assert rec.changes[0][1] is None  # media come with the end only


def test_cooldown_max_duration_resets_and_deletion() -> None:
    # A second run right after the first event: inside the 2 s cooldown, no event.
    scores = [5] * 3 + [0] * 4 + [5] * 5 + [0] * 4
    _, rec = run(scores)
    assert rec.kinds() == [("start", None), ("end", EndReason.RELEASED)]
    # Long enough after it: a new event.
    engine, rec = run([5] * 3 + [0] * 4)
    _, rec2 = run([5] * 3, engine=engine, start=100)
    assert rec2.kinds() == [("start", None)]
    # 10 s at most: split, and the run goes on in a new event at once.
    _, rec = run([5] * 600)
    assert rec.kinds()[:4] == [("start", None), ("end", EndReason.MAX_DURATION), ("start", None),
                               ("end", EndReason.MAX_DURATION)]
    first_end, second_start = rec.changes[1][0].event, rec.changes[2][0].event
    assert second_start.start_frame == first_end.end_frame
    # A ring reset (a new epoch) closes the open event.
    engine, rec = run([5] * 4)
    _, rec2 = run([0], engine=engine, start=10, epoch=1)
    assert rec2.kinds() == [("end", EndReason.BUFFER_RESET)]
    engine, rec = run([5] * 4)
    engine.on_change = rec
    engine.remove_stream("s1")
    assert rec.kinds()[-1] == ("end", EndReason.STREAM_DELETED)
    engine, rec = run([5] * 4)
    engine.add_stream("s2", "other", "m")
    engine.on_change = rec
    engine.close_all()
    assert rec.kinds()[-1] == ("end", EndReason.SHUTDOWN)


def test_a_new_peak_is_an_update_at_most_once_a_second() -> None:
    rising = [5 + i / 10 for i in range(100)]  # a new peak every frame for 4 s
    _, rec = run(rising)
    updates = [c.event for c, _ in rec.changes if c.kind == ChangeKind.UPDATE]
    assert len(updates) == 3  # at 1, 2 and 3 s after the start
    assert [u.peak_frame for u in updates] == sorted(u.peak_frame for u in updates)


def test_no_event_while_the_calibration_raises_no_alarm() -> None:
    _, rec = run([9] * 20, alarms=False)
    assert rec.changes == []


def test_the_frame_memory_is_bounded_by_bytes_and_counts_what_it_dropped() -> None:
    engine = EventEngine(PARAMS, 3000, Recorder())
    engine.add_stream("s1", "lobby", "m")
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    for i in range(20):
        engine.observe(result(i, 0), 0, np.zeros((32, 32), np.float32), keep_frame(frame, 1280), jpeg)
    assert engine.frame_memory_bytes_used() <= 3000
    assert engine.frames_dropped_from_memory() >= 20 - 3000 // len(jpeg)


def test_media_snapshot_with_heatmap_and_box_and_a_playable_clip(tmp_path: Path) -> None:
    engine, rec = run([0] * 5 + [5, 6, 9, 6, 5] + [0] * 6)
    change, media = rec.changes[-1]
    errors = np.zeros((32, 32), np.float32)
    errors[2:6, 2:6] = 1.0
    media = type(media)(media.peak_frame, errors, 0.5, media.frame_size, media.clip)
    record = write_media(tmp_path, change.event, media)
    assert record.media_error is None and record.media_bytes > 0
    overlay = cv2.imread(str(tmp_path / record.snapshot_path))
    clean = cv2.imread(str(tmp_path / record.clean_snapshot_path))
    assert overlay.shape == clean.shape == (120, 160, 3)
    assert np.abs(clean.astype(int) - 90).max() < 8  # the frame itself
    assert overlay[10, 10].tolist() != clean[10, 10].tolist()  # the box's corner is drawn
    assert record.snapshot_path.endswith(f"{record.id}.jpg") and record.clip_path.endswith(".mp4")
    with av.open(str(tmp_path / record.clip_path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))
    assert len(frames) == len(media.clip) and frames[0].width == 160
    assert not list(tmp_path.rglob("*.tmp"))


def test_media_failures_keep_the_event(tmp_path: Path) -> None:
    engine, rec = run([5] * 3 + [0] * 4)
    change, media = rec.changes[-1]
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # the media folder cannot be created: as a full or read-only disk
    record = write_media(blocked, change.event, media)
    assert record.snapshot_path is None and record.clip_path is None
    assert "snapshot not written" in record.media_error and "clip not written" in record.media_error
    done = []
    writer = MediaWriter(blocked, done.append, max_pending=1)
    writer.start()
    writer.submit(change, media)
    writer.stop()
    assert len(done) == 1 and done[0].event.media_error and writer.failed == 1
    assert done[0].kind == ChangeKind.END
