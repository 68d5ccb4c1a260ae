"""Events stage: runs of abnormal frames of one stream become anomaly events (after scoring, before
publishing; on the inference worker's thread, in each stream's frame order).

Per stream (`EventParams`, defaults from the `events` settings, overridable per stream):

- an event **opens** when `min_frames` scored frames in a row are anomalous (smoothed z at or above the
  stream's threshold, and its calibration allows alarms), unless the stream's last event ended less than
  `cooldown_seconds` ago; it starts at the first frame of that run;
- it **stays open** while the smoothed z is at or above `threshold - hysteresis` (the exit threshold),
  and **closes** ("released") after `release_frames` frames in a row below it, ending at the last frame
  above it;
- an event longer than `max_seconds` is closed ("max_duration") and, if the run goes on, a new one opens
  at once (no cooldown);
- a reset of the stream's ring (a reconnect, a gap, a new frame size) closes it ("buffer_reset"), as do
  the stream's deletion ("stream_deleted") and the service's shutdown ("shutdown").

An open event follows its peak (the frame of highest smoothed z), the union of the top windows of its
frames at or above the threshold (its box), and how many such frames it had. Changes go to `on_change`
as `EventChange` values: start, update (a new peak, at most one per `UPDATE_INTERVAL_S` of frame time,
and always with the end) and end. What the media writer needs (the peak frame with its error map; the
frames for the clip) is handed over with them (`EventMedia`).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .domain import FrameResult
from .eventtypes import Box, ChangeKind, EndReason, EventChange, EventRecord
from .heatmap import KeptFrame

log = logging.getLogger("vad.events")

#: Least frame time between two "update" changes of one event (a rising score makes a new peak per frame).
UPDATE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class EventParams:
    min_frames: int = 5
    hysteresis: float = 1.0
    release_frames: int = 25
    cooldown_seconds: float = 10.0
    max_seconds: float = 300.0
    pre_roll_seconds: float = 3.0
    clip_max_seconds: float = 120.0


@dataclass(frozen=True)
class ClipFrame:
    index: int
    timestamp: float
    jpeg: bytes  # the frame as JPEG (downscaled like the heatmap history's frames)
    size: tuple[int, int]  # (W, H) of the JPEG


@dataclass(frozen=True)
class EventMedia:
    """What the media writer turns into a snapshot and a clip when an event ends."""

    peak_frame: KeptFrame | None
    peak_errors: np.ndarray | None  # (S, S) E² of the peak frame
    peak_threshold_score: float | None  # heatmap colour scale: raw score at the threshold
    frame_size: tuple[int, int]  # original frame (W, H): the box is in these pixels
    clip: tuple[ClipFrame, ...]


class FrameMemory:
    """A stream's recent frames for clips' pre-roll: bounded by bytes, oldest dropped (counted)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: deque[ClipFrame] = deque()
        self.bytes = 0
        self.dropped = 0

    def add(self, frame: ClipFrame) -> None:
        if self.max_bytes <= 0:
            return
        self._frames.append(frame)
        self.bytes += len(frame.jpeg)
        while self.bytes > self.max_bytes and self._frames:
            old = self._frames.popleft()
            self.bytes -= len(old.jpeg)
            self.dropped += 1

    def since(self, timestamp: float) -> list[ClipFrame]:
        return [f for f in self._frames if f.timestamp >= timestamp]

    def clear(self) -> None:
        self._frames.clear()
        self.bytes = 0


@dataclass(eq=False)
class _Open:
    record: EventRecord
    peak_frame: KeptFrame | None
    peak_errors: np.ndarray | None
    peak_threshold_score: float | None
    frame_size: tuple[int, int]
    clip: list[ClipFrame]
    clip_bytes: int
    last_above_exit: tuple[int, float]  # frame index and time of the last frame at/above the exit threshold
    below: int = 0
    last_update_at: float = 0.0
    pending_update: bool = False


@dataclass(eq=False)
class _StreamEvents:
    stream_name: str
    model: str
    params: EventParams
    memory: FrameMemory
    epoch: int = -1
    run: list[FrameResult] = field(default_factory=list)  # the current run of anomalous frames (closed)
    cooldown_until: float = float("-inf")
    open: _Open | None = None


ChangeSink = Callable[[EventChange, EventMedia | None], None]


class EventEngine:
    """See the module docstring. `observe` runs on the inference worker; the rest may be called from API
    threads (a lock guards the per-stream state)."""

    def __init__(self, defaults: EventParams, frame_memory_bytes: int, on_change: ChangeSink) -> None:
        self.defaults = defaults
        self.frame_memory_bytes = frame_memory_bytes
        self.on_change = on_change
        self._streams: dict[str, _StreamEvents] = {}
        self._lock = threading.Lock()
        self.clip_frames_dropped = 0  # frames an event's clip could not keep (its byte budget was reached)
        self._dropped_by_removed = 0  # frame-memory drops of streams gone (the counter stays monotonic)

    # --- streams ------------------------------------------------------------------------------------
    def add_stream(self, stream_id: str, stream_name: str, model: str, params: EventParams | None = None) -> None:
        with self._lock:
            self._streams[stream_id] = _StreamEvents(stream_name, model, params or self.defaults,
                                                     FrameMemory(self.frame_memory_bytes))

    def set_params(self, stream_id: str, params: EventParams) -> None:
        with self._lock:
            state = self._streams.get(stream_id)
            if state is not None:
                state.params = params

    def params(self, stream_id: str) -> EventParams | None:
        with self._lock:
            state = self._streams.get(stream_id)
            return state.params if state is not None else None

    def remove_stream(self, stream_id: str, reason: EndReason = EndReason.STREAM_DELETED) -> None:
        """Close the stream's open event with `reason` and forget the stream."""
        with self._lock:
            state = self._streams.pop(stream_id, None)
            changes = self._close(state, reason) if state is not None else []
            if state is not None:
                self._dropped_by_removed += state.memory.dropped
        self._emit(changes)

    def close_all(self, reason: EndReason = EndReason.SHUTDOWN) -> None:
        with self._lock:
            states = list(self._streams.values())
            changes = [c for s in states for c in self._close(s, reason)]
        self._emit(changes)

    def open_event(self, stream_id: str) -> EventRecord | None:
        with self._lock:
            state = self._streams.get(stream_id)
            return state.open.record if state is not None and state.open is not None else None

    def open_count(self) -> int:
        with self._lock:
            return sum(1 for s in self._streams.values() if s.open is not None)

    def frame_memory_bytes_used(self) -> int:
        with self._lock:
            return sum(s.memory.bytes for s in self._streams.values())

    def frames_dropped_from_memory(self) -> int:
        with self._lock:
            return self._dropped_by_removed + sum(s.memory.dropped for s in self._streams.values())

    # --- one scored frame (inference worker) ---------------------------------------------------------
    def observe(self, result: FrameResult, epoch: int, errors: np.ndarray, kept: KeptFrame | None,
                jpeg: bytes | None) -> None:
        """A scored frame of a stream; `jpeg`: the frame as JPEG for clips (None: not kept for clips)."""
        if result.stream_id is None or result.status != "scored" or result.smoothed_score is None:
            return
        with self._lock:
            state = self._streams.get(result.stream_id)
            if state is None:
                return
            changes: list[tuple[EventChange, EventMedia | None]] = []
            if state.epoch != epoch:
                if state.epoch != -1:
                    changes += self._close(state, EndReason.BUFFER_RESET)
                    state.memory.clear()
                state.epoch, state.run = epoch, []
            clip_frame = None
            if jpeg is not None and kept is not None:
                clip_frame = ClipFrame(result.frame_index, result.timestamp, jpeg, kept.size)
                state.memory.add(clip_frame)
            changes += self._step(state, result, errors, kept, clip_frame)
        self._emit(changes)

    def _step(self, state: _StreamEvents, r: FrameResult, errors: np.ndarray, kept: KeptFrame | None,
              clip_frame: ClipFrame | None) -> list[tuple[EventChange, EventMedia | None]]:
        p = state.params
        assert r.smoothed_score is not None and r.threshold is not None
        anomalous = bool(r.is_anomaly)
        changes: list[tuple[EventChange, EventMedia | None]] = []
        current = state.open
        if current is None:
            state.run = [*state.run, r][-p.min_frames:] if anomalous else []
            if len(state.run) >= p.min_frames and r.timestamp >= state.cooldown_until:
                changes.append(self._start(state, state.run[0], r, errors, kept))
                state.run = []
            return changes
        if clip_frame is not None:
            self._add_clip_frame(current, clip_frame, p)
        exit_threshold = r.threshold - p.hysteresis
        event = current.record
        if r.smoothed_score >= exit_threshold:
            current.below = 0
            current.last_above_exit = (r.frame_index, r.timestamp)
        else:
            current.below += 1
        if anomalous:
            event = replace(event, frames_above=event.frames_above + 1, box=_union(event.box, r))
        if r.smoothed_score > event.peak_score:
            event = replace(event, peak_score=r.smoothed_score, peak_frame=r.frame_index, peak_at=r.timestamp)
            current.peak_frame, current.peak_errors = kept, errors
            current.peak_threshold_score, current.frame_size = r.threshold_score, (r.frame_width, r.frame_height)
            current.pending_update = True
        current.record = event
        if current.below >= p.release_frames:
            changes += self._end(state, EndReason.RELEASED)
            return changes
        if r.timestamp - event.started_at >= p.max_seconds:
            changes += self._end(state, EndReason.MAX_DURATION, ended=(r.frame_index, r.timestamp))
            state.cooldown_until = float("-inf")  # the run goes on: the next event may open at once
            if anomalous:
                changes.append(self._start(state, r, r, errors, kept))
            return changes
        if current.pending_update and r.timestamp - current.last_update_at >= UPDATE_INTERVAL_S:
            current.pending_update, current.last_update_at = False, r.timestamp
            changes.append((EventChange(ChangeKind.UPDATE, event), None))
        return changes

    def _start(self, state: _StreamEvents, first: FrameResult, r: FrameResult, errors: np.ndarray,
               kept: KeptFrame | None) -> tuple[EventChange, EventMedia | None]:
        assert r.smoothed_score is not None and r.threshold is not None
        box = None
        for frame in state.run or [r]:  # the run ends with r
            box = _union(box, frame)
        record = EventRecord(
            id=uuid.uuid4().hex, stream_id=r.stream_id or "", stream_name=state.stream_name, model=state.model,
            started_at=first.timestamp, start_frame=first.frame_index, peak_score=r.smoothed_score,
            peak_frame=r.frame_index, peak_at=r.timestamp, box=box, frames_above=max(len(state.run), 1),
            threshold=r.threshold,
        )
        p = state.params
        clip = state.memory.since(first.timestamp - p.pre_roll_seconds)
        state.open = _Open(
            record=record, peak_frame=kept, peak_errors=errors, peak_threshold_score=r.threshold_score,
            frame_size=(r.frame_width, r.frame_height), clip=clip, clip_bytes=sum(len(f.jpeg) for f in clip),
            last_above_exit=(r.frame_index, r.timestamp), last_update_at=r.timestamp,
        )
        log.info("event %s opened on stream %s at frame %d (z %.2f)", record.id, record.stream_id,
                 record.start_frame, record.peak_score)
        return EventChange(ChangeKind.START, record), None

    def _add_clip_frame(self, current: _Open, frame: ClipFrame, p: EventParams) -> None:
        if frame.timestamp - current.record.started_at > p.clip_max_seconds or (
            current.clip_bytes + len(frame.jpeg) > self.frame_memory_bytes
        ):
            self.clip_frames_dropped += 1
            return
        current.clip.append(frame)
        current.clip_bytes += len(frame.jpeg)

    def _end(self, state: _StreamEvents, reason: EndReason,
             ended: tuple[int, float] | None = None) -> list[tuple[EventChange, EventMedia | None]]:
        current = state.open
        if current is None:
            return []
        end_frame, ended_at = ended or current.last_above_exit
        record = replace(current.record, ended_at=ended_at, end_frame=end_frame, end_reason=reason)
        state.open = None
        state.cooldown_until = ended_at + state.params.cooldown_seconds
        # The clip ends with the event (the frames seen while waiting for the release are not part of it).
        clip = tuple(f for f in current.clip if f.timestamp <= ended_at)
        media = EventMedia(current.peak_frame, current.peak_errors, current.peak_threshold_score,
                           current.frame_size, clip)
        log.info("event %s on stream %s ended (%s) after %.1f s, peak z %.2f", record.id, record.stream_id,
                 reason, ended_at - record.started_at, record.peak_score)
        return [(EventChange(ChangeKind.END, record), media)]

    def _close(self, state: _StreamEvents, reason: EndReason) -> list[tuple[EventChange, EventMedia | None]]:
        if state.open is None:
            return []
        # The last frame seen counts as the end: the event did not release.
        return self._end(state, reason)

    def _emit(self, changes: list[tuple[EventChange, EventMedia | None]]) -> None:
        for change, media in changes:
            try:
                self.on_change(change, media)
            except Exception:  # a failing consumer must not stop scoring
                log.exception("event change %s of %s could not be handed on", change.kind, change.event.id)


def _union(box: Box | None, r: FrameResult) -> Box | None:
    if r.patch is None or not r.is_anomaly:
        return box
    p = r.patch
    if box is None:
        return Box(p.x, p.y, p.w, p.h)
    x0, y0 = min(box.x, p.x), min(box.y, p.y)
    x1, y1 = max(box.x + box.w, p.x + p.w), max(box.y + box.h, p.y + p.h)
    return Box(x0, y0, x1 - x0, y1 - y0)
