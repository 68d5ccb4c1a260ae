"""Streams: the registry of open streams and the pipeline wiring (buffer -> infer -> score -> publish).

Interface for frame producers other than HTTP push (live sources in service/sources.py)
-------------------------------------------------------------------------------------------
All methods are thread-safe and may be called from a source's own thread.

    manager.submit(stream_id, frame_bgr, timestamp=None, *, received_at=None) -> Future[FrameResult]
        frame_bgr: decoded uint8 (H, W, 3) BGR, (H, W) gray or (H, W, 4) BGRA, any size (a size change
        resets the ring buffer: the next T-1 frames answer "warming" with a reason). timestamp:
        capture time in seconds since the epoch (default: now). The future (concurrent.futures)
        resolves to a FrameResult with status "warming", "scored" or "dropped" (reason "overload",
        "stream_deleted", "shutdown", "inference_error"); it never raises for an accepted frame.
        A source need not wait on it (under overload the oldest waiting frame is dropped anyway).
        Raises StreamNotFound, StreamClosed, NotReady (model not loaded) or InvalidImage.
    manager.reset_buffer(stream_id, reason=None)   e.g. after a reconnect: the next T-1 frames warm up
    manager.set_state(stream_id, state, reason=None)   "starting"|"warming"|"running"|"reconnecting"|
        "stopped"|"failed"; submit() moves starting/reconnecting/warming on by itself as frames arrive.
    manager.sink(stream_id, max_in_flight=2, result_timeout_s=30.0) -> StreamSink   the calls above bound
        to one stream, in the shape of service.sources.FrameSink (see `StreamSink`).

Live sources are created through the `source_factory` given to the manager (see `SourceFactory`):
POST /v1/streams with a source other than "push" calls factory(request, manager) and then .start() on
the `StreamSource` it returns; DELETE calls .stop(). The factory raises UnsupportedSource (or
ValueError) with a message for a source it cannot handle (-> 422).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from model.backends import ClipScores
from model.data import resize_frame

from .buffer import FrameRing
from .calibration import (
    CalibrationChoice,
    CalibrationMode,
    CalibrationStatus,
    CalibrationStore,
    LearnedCalibration,
)
from .domain import (
    DropReason,
    FrameResult,
    HeatmapNotAvailable,
    InvalidImage,
    NotReady,
    StreamClosed,
    StreamInfo,
    StreamLimitReached,
    StreamNotFound,
    StreamState,
    UnsupportedSource,
)
from .events import EventEngine, EventParams
from .heatmap import JPEG_QUALITY, KeptFrame, keep_frame
from .history import HeatmapHistory, HeatmapRecord
from .infer import Job
from .metrics import ServiceMetrics
from .models import ModelSlot
from .netguard import redact_url
from .regions import IgnoreRegions, parse_regions
from .score import ScoredFrame

log = logging.getLogger("vad.streams")

PUSH = "push"
# States in which a stream's frames are scored.
_SCORING = (StreamState.RUNNING, StreamState.LEARNING)


@dataclass(frozen=True)
class SourceRequest:
    """What POST /v1/streams asked for, handed to the source factory."""

    stream_id: str
    source: str  # e.g. "rtsp://camera/stream" or "http://camera/mjpeg"
    name: str
    options: Mapping[str, Any]


class StreamSource(Protocol):
    """What a source factory returns for a live stream (e.g. service.sources.LiveSource)."""

    def start(self) -> None:
        """Begin producing frames (non-blocking: run in your own thread, call manager.submit)."""

    def stop(self) -> None:
        """Stop producing and release the connection; called on DELETE and at shutdown (may block briefly)."""

    def drops(self) -> Mapping[str, int]:
        """Frames the source dropped before they reached the stream, by reason (stale, max_fps, ...)."""


SourceFactory = Callable[[SourceRequest, "StreamManager"], StreamSource]


@dataclass(eq=False)
class _StreamJob(Job):
    """A stream frame's job, with what the heatmap history will keep of the frame (made by the producer)."""

    kept: KeptFrame | None = None


@dataclass(frozen=True)
class ScoringRequest:
    """How a new stream scores (POST /v1/streams): its model, threshold, calibration and ignore regions."""

    model: str | None = None  # None: the default model
    threshold: float | None = None  # None: the model's
    events: EventParams | None = None  # None: the service's defaults
    calibration: CalibrationChoice | None = None  # None: the service's default mode
    ignore_regions: Sequence[Sequence[Sequence[float]]] = ()  # polygons, checked by parse_regions


@dataclass(eq=False)
class _Stream:
    id: str
    name: str
    source: str
    ring: FrameRing
    slot: ModelSlot
    created_at: float = field(default_factory=time.time)
    state: StreamState = StreamState.STARTING
    state_reason: str | None = None
    received: int = 0
    warming: int = 0
    scored: int = 0
    dropped: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)  # the manager's drops (`dropped`)
    pending: int = 0
    last_result: FrameResult | None = None
    last_timestamp: tuple[float, bool] | None = None  # the last frame's time, and whether the producer gave it
    closed: bool = False
    live: StreamSource | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def info(self, events: EventEngine | None = None) -> StreamInfo:
        open_event = events.open_event(self.id) if events is not None else None
        drops = {str(reason): count for reason, count in self.dropped_by_reason.items()}
        source_drops = getattr(self.live, "drops", None)  # a live source's own (a test's fake may have none)
        for reason, count in (source_drops() if source_drops is not None else {}).items():
            drops[reason] = drops.get(reason, 0) + count
        return StreamInfo(
            id=self.id, name=self.name, source=self.source, state=self.state, state_reason=self.state_reason,
            created_at=self.created_at, frames_received=self.received, frames_warming=self.warming,
            frames_scored=self.scored, frames_dropped=self.dropped, frames_pending=self.pending,
            last_result=self.last_result, model=self.slot.name, scoring=self.slot.scorer.view(self.id),
            events=events.params(self.id) if events is not None else None,
            open_event=open_event.id if open_event is not None else None,
            frames_dropped_by_reason=drops,
        )


@dataclass(frozen=True)
class ClipOutcome:
    """What a stateless clip's future resolves to: the result and, when scored, its error map."""

    result: FrameResult
    errors: np.ndarray | None


def _resolve(future: Future[Any], result: FrameResult | ClipOutcome) -> None:
    # The awaiting request may have gone away and cancelled its future; the frame is still counted.
    with contextlib.suppress(InvalidStateError):
        future.set_result(result)


class StreamManager:
    def __init__(
        self,
        *,
        acquire: Callable[[str | None], ModelSlot],
        default_slot: Callable[[], ModelSlot | None],
        metrics: ServiceMetrics,
        publish: Callable[[FrameResult], None],
        on_stream_deleted: Callable[[str], None],
        max_streams: int,
        heatmap_history: int,
        heatmap_history_bytes_per_stream: int = 8 * 1024 * 1024,
        heatmap_history_bytes_total: int = 128 * 1024 * 1024,
        heatmap_frame_max_side: int = 1280,
        max_gap_seconds: float = 5.0,
        source_factory: SourceFactory | None = None,
        readiness: Callable[[], str | None] = lambda: None,
        calibration_store: CalibrationStore | None = None,
        default_calibration: str = CalibrationMode.AUTO,
        events: EventEngine | None = None,
    ) -> None:
        self.acquire = acquire  # model name -> its loaded pipeline (UnknownModel, ModelUnavailable)
        self.default_slot = default_slot
        self.calibration_store = calibration_store or CalibrationStore(None)
        self.default_calibration = CalibrationMode(default_calibration)
        self.events = events  # the events stage, after scoring (None: no events)
        self.metrics = metrics
        self.publish = publish
        self.on_stream_deleted = on_stream_deleted
        self.max_streams = max_streams
        self.heatmap_history = heatmap_history
        self.heatmap_frame_max_side = heatmap_frame_max_side
        self.max_gap_seconds = max_gap_seconds  # frames further apart (or going back) are not one clip
        self.history = HeatmapHistory(
            heatmap_history, heatmap_history_bytes_per_stream, heatmap_history_bytes_total,
            lambda reason, count: metrics.heatmap_history_evicted.labels(reason).inc(count),
        )
        metrics.live.heatmap_history_bytes = self.history.bytes_kept
        self.source_factory = source_factory
        self.readiness = readiness  # returns why frames cannot be scored now, or None
        self._streams: dict[str, _Stream] = {}
        self._named: set[str] = set()  # names given by clients (bounded by max_streams: removed on delete)
        self._lock = threading.Lock()
        self._stateless_index = 0

    # --- registry -----------------------------------------------------------------------------
    def create(
        self, source: str = PUSH, name: str | None = None, options: Mapping[str, Any] | None = None,
        scoring: ScoringRequest | None = None,
    ) -> StreamInfo:
        """Blocks while the stream's model loads on first use; raises UnknownModel, ModelUnavailable,
        InvalidRegion, StreamLimitReached, UnsupportedSource."""
        scoring = scoring or ScoringRequest()
        if source != PUSH and self.source_factory is None:
            raise UnsupportedSource(
                f"source {source!r}: live sources are not supported by this server yet; use \"push\""
            )
        regions = parse_regions(scoring.ignore_regions, None) if scoring.ignore_regions else IgnoreRegions()
        self._require_ready()
        slot = self.acquire(scoring.model)
        with self._lock:
            if len(self._streams) >= self.max_streams:
                raise StreamLimitReached(
                    f"at most {self.max_streams} streams may be open at once; delete one first"
                )
            stream_id = uuid.uuid4().hex[:12]
            # Only the redacted URL is kept: credentials never reach responses, logs or metrics.
            stream = _Stream(
                id=stream_id, name=name or stream_id, source=source if source == PUSH else redact_url(source),
                ring=FrameRing(slot.config.frames), slot=slot,
            )
            self._configure_scoring(stream, scoring.calibration, scoring.threshold, regions)
            if self.events is not None:
                self.events.add_stream(stream_id, stream.name, slot.name, scoring.events)
            self._streams[stream_id] = stream
            if name:
                self._named.add(name)
        if source != PUSH:
            assert self.source_factory is not None
            try:
                stream.live = self.source_factory(SourceRequest(stream_id, source, stream.name, options or {}), self)
                stream.live.start()
            except (UnsupportedSource, ValueError) as exc:
                self._discard(stream_id)
                raise UnsupportedSource(str(exc)) from exc
            except Exception:
                self._discard(stream_id)
                raise
        log.info("stream %s (%s) created, source %s, model %s", stream_id, stream.name, stream.source, slot.name)
        with stream.lock:
            return stream.info(self.events)

    def _configure_scoring(
        self, stream: _Stream, choice: CalibrationChoice | None, threshold: float | None, regions: IgnoreRegions
    ) -> None:
        """Hand the stream's scoring settings to its model's score stage, with a stored calibration
        learned before by a stream of the same name on the same weights."""
        slot = stream.slot
        choice = choice or CalibrationChoice(self.default_calibration)
        stored = reason = None
        if choice.mode in (CalibrationMode.AUTO, CalibrationMode.LEARN):
            stored, reason = self.calibration_store.load(slot.name, stream.name, slot.weights_sha256)
            if reason:
                log.warning("stream %s: %s", stream.id, reason)
        slot.scorer.configure(
            stream.id, stream_name=stream.name, model=slot.name, weights_sha256=slot.weights_sha256, choice=choice,
            threshold=threshold, regions=regions, stored=stored, stored_reason=reason, on_learned=self._save_learned,
        )

    def _save_learned(self, learned: LearnedCalibration) -> None:
        # On the inference worker: one small file, written once per learning. A stream without a name of
        # its own (named after its random id) stores nothing: no later stream could find it.
        if learned.stream_name not in self._named:
            return
        try:
            self.calibration_store.save(learned)
        except OSError as exc:
            log.error("could not store the calibration learned by stream %s: %s (it is used until the stream "
                      "is deleted)", learned.stream_name, exc)

    def update(self, stream_id: str, changes: Mapping[str, Any]) -> StreamInfo:
        """PATCH: the keys given among "threshold" (None: the model's), "ignore_regions" and "events" change."""
        stream = self._get(stream_id)
        scorer = stream.slot.scorer
        regions = None
        if "ignore_regions" in changes:
            with stream.lock:
                frame_size = stream.ring.frame_size
            regions = parse_regions(changes["ignore_regions"] or [], frame_size)
        with stream.lock:
            if stream.closed:
                raise StreamClosed(f"stream {stream_id!r} is {stream.state}")
            if "threshold" in changes:
                scorer.set_threshold(stream_id, changes["threshold"])
            if "events" in changes and self.events is not None:
                self.events.set_params(stream_id, changes["events"])
            if regions is not None:
                scorer.set_regions(stream_id, regions)
            return stream.info(self.events)

    def relearn_calibration(self, stream_id: str) -> StreamInfo:
        stream = self._get(stream_id)
        stream.slot.scorer.relearn(stream_id)
        self.calibration_store.delete(stream.slot.name, stream.name)
        log.info("stream %s relearns its calibration", stream_id)
        return self.get(stream_id)

    def forget_calibration(self, stream_id: str) -> StreamInfo:
        """Back to the model's calibration; the stored one is deleted."""
        stream = self._get(stream_id)
        stream.slot.scorer.use_model_calibration(stream_id)
        self.calibration_store.delete(stream.slot.name, stream.name)
        log.info("stream %s uses the model's calibration", stream_id)
        return self.get(stream_id)

    def get(self, stream_id: str) -> StreamInfo:
        stream = self._get(stream_id)
        with stream.lock:
            return stream.info(self.events)

    def model_busy(self, stream_id: str) -> float:
        """The busy share (0..1) of the inference worker scoring this stream."""
        worker = self._get(stream_id).slot.worker
        return worker.busy.share() if worker is not None else 0.0

    def list(self) -> list[StreamInfo]:
        with self._lock:
            streams = list(self._streams.values())
        result = []
        for stream in streams:
            with stream.lock:
                result.append(stream.info(self.events))
        return sorted(result, key=lambda s: s.created_at)

    def delete(self, stream_id: str) -> StreamInfo:
        """Stop a stream: its waiting frames end as dropped ("stream_deleted"), subscribers are closed."""
        stream = self._discard(stream_id)
        if stream is None:
            raise StreamNotFound(f"no stream {stream_id!r}")
        if stream.live is not None:
            try:
                stream.live.stop()
            except Exception:  # the stream is gone either way; say why the source did not stop cleanly
                log.exception("stream %s: source did not stop cleanly", stream_id)
            self.metrics.forget_stream(stream_id)  # what the source counted while it stopped
        for job in stream.slot.queue.remove_stream(stream_id):
            self._finish_dropped(stream, job, DropReason.STREAM_DELETED)
        with stream.lock:
            info = stream.info(self.events)
        log.info("stream %s deleted after %d frames", stream_id, info.frames_received)
        return info

    def scoring_gauges(self) -> dict[str, tuple[bool, float]]:
        """stream id -> (out-of-domain warning on, calibration progress), for the metrics."""
        with self._lock:
            streams = list(self._streams.values())
        gauges = {}
        for stream in streams:
            view = stream.slot.scorer.view(stream.id)
            if view is not None:
                gauges[stream.id] = (bool(view.domain_z is not None and view.domain_z > view.domain_limit),
                                     view.calibration.progress)
        return gauges

    def latest_scores(self) -> dict[str, float]:
        """stream id -> its last smoothed z-score (for the metrics)."""
        with self._lock:
            streams = list(self._streams.values())
        scores = {}
        for stream in streams:
            last = stream.last_result
            if last is not None and last.smoothed_score is not None:
                scores[stream.id] = last.smoothed_score
        return scores

    def state_counts(self) -> dict[str, int]:
        with self._lock:
            streams = list(self._streams.values())
        counts: dict[str, int] = {}
        for stream in streams:
            counts[stream.state] = counts.get(stream.state, 0) + 1
        return counts

    def close(self) -> None:
        """Shutdown: stop live sources; waiting frames are answered by the lifespan via `drop_jobs`."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            with stream.lock:
                stream.closed = True
                stream.state = StreamState.STOPPED
            if stream.live is not None:
                try:
                    stream.live.stop()
                except Exception:
                    log.exception("stream %s: source did not stop cleanly", stream.id)
        if self.events is not None:
            self.events.close_all()  # open events end ("shutdown")

    # --- producer interface (see module docstring) ---------------------------------------------
    def submit(
        self,
        stream_id: str,
        frame_bgr: np.ndarray,
        timestamp: float | None = None,
        *,
        received_at: float | None = None,
    ) -> Future[FrameResult]:
        received_at = time.monotonic() if received_at is None else received_at
        given = timestamp is not None  # capture time from the producer, else receipt time
        timestamp = time.time() if timestamp is None else timestamp
        self._require_ready()
        stream = self._get(stream_id)
        _check_frame(frame_bgr)
        resized = resize_frame(frame_bgr, stream.slot.config)  # outside the lock: the costly parts
        # What the heatmap history keeps of the frame, made here rather than on the inference worker;
        # skipped for a frame that will (most likely: the ring is read unlocked) only warm the ring.
        frame_size = (frame_bgr.shape[1], frame_bgr.shape[0])
        ring = stream.ring
        will_score = len(ring) + 1 >= ring.frames and ring.frame_size == frame_size
        kept = keep_frame(frame_bgr, self.heatmap_frame_max_side) if will_score else None
        with stream.lock:
            if stream.closed:
                raise StreamClosed(f"stream {stream_id!r} is {stream.state}")
            index = stream.received
            stream.received += 1
            self.metrics.frames_received.labels(stream_id).inc()
            reason = None
            previous = stream.ring.frame_size
            if previous is not None and previous != frame_size:
                reason = (f"frame size changed from {previous[0]}x{previous[1]} to "
                          f"{frame_size[0]}x{frame_size[1]}; buffer reset")
                stream.ring.reset()
            last = stream.last_timestamp
            # Capture times are compared with capture times, receipt times with receipt times. Receipt
            # times of concurrent requests are taken before this lock, in any order: only a pause counts.
            same_kind = last is not None and last[1] == given
            backwards = same_kind and given and timestamp < last[0]
            paused = same_kind and timestamp - last[0] > self.max_gap_seconds
            stream.last_timestamp = (timestamp if given or not same_kind else max(timestamp, last[0]), given)
            if reason is None and len(stream.ring) and (backwards or paused):
                # Not the next frame of the same video (another clip, a pause): do not mix them in a clip.
                reason = (f"timestamp jumped from {last[0]:.3f} to {timestamp:.3f} (backwards, or forwards by more "
                          f"than {self.max_gap_seconds:g} s); buffer reset")
                stream.ring.reset()
            buffered = len(stream.ring)
            stream.ring.push(resized, frame_size)
            if stream.state in (StreamState.STARTING, StreamState.RECONNECTING) or (reason and stream.state in _SCORING):
                stream.state, stream.state_reason = StreamState.WARMING, reason
            if not stream.ring.full:
                stream.warming += 1
                self.metrics.frames_warming.labels(stream_id).inc()
                result = FrameResult(
                    stream_id=stream_id, frame_index=index, status="warming", timestamp=timestamp,
                    latency_ms=(time.monotonic() - received_at) * 1000, frame_width=frame_size[0],
                    frame_height=frame_size[1], frames_buffered=buffered, reason=reason,
                )
                stream.last_result = result
                future: Future[FrameResult] = Future()
                future.set_result(result)
                return future
            job = _StreamJob(
                stream_id=stream_id, frame_index=index, clip=stream.ring.clip(), frame=frame_bgr,
                timestamp=timestamp, received_at=received_at, epoch=stream.ring.epoch, frames_buffered=buffered,
                kept=kept,
            )
            stream.pending += 1
            evicted = stream.slot.queue.put(job)  # under the stream lock: queue order = frame order
        for old in evicted:
            self._finish_dropped(stream, old, DropReason.OVERLOAD if old is not job else DropReason.SHUTDOWN)
        return job.future

    def reset_buffer(self, stream_id: str, reason: str | None = None) -> None:
        stream = self._get(stream_id)
        with stream.lock:
            stream.ring.reset()
            if stream.state in _SCORING:
                stream.state, stream.state_reason = StreamState.WARMING, reason

    def set_state(self, stream_id: str, state: StreamState, reason: str | None = None) -> None:
        try:
            state = StreamState(state)
        except ValueError:
            raise ValueError(f"unknown stream state {state!r}; one of {', '.join(StreamState)}") from None
        stream = self._get(stream_id)
        with stream.lock:
            stream.state, stream.state_reason = state, reason
        log.info("stream %s is %s%s", stream_id, state, f" ({reason})" if reason else "")

    def sink(self, stream_id: str, max_in_flight: int = 2, result_timeout_s: float = 30.0) -> StreamSink:
        self._get(stream_id)
        return StreamSink(self, stream_id, max_in_flight=max_in_flight, result_timeout_s=result_timeout_s)

    # --- stateless scoring -------------------------------------------------------------------
    def score_clip(self, frames: list[np.ndarray], *, received_at: float | None = None) -> Future[ClipOutcome]:
        """Score T decoded frames (oldest first) as one clip, outside any stream. Raises Overloaded."""
        received_at = time.monotonic() if received_at is None else received_at
        self._require_ready()
        slot = self.default_slot()
        if slot is None:
            raise NotReady("not ready to score frames: no model loaded")
        config = slot.config
        if len(frames) != config.frames:
            raise InvalidImage(f"send exactly {config.frames} images (oldest first), got {len(frames)}")
        sizes = {(f.shape[1], f.shape[0]) for f in frames}
        if len(sizes) > 1:
            raise InvalidImage("all images of a clip must have the same size, got "
                               + ", ".join(f"{w}x{h}" for w, h in sorted(sizes)))
        for frame in frames:
            _check_frame(frame)
        ring = FrameRing(config.frames)
        for frame in frames:
            ring.push(resize_frame(frame, config), (frame.shape[1], frame.shape[0]))
        with self._lock:
            index = self._stateless_index
            self._stateless_index += 1
        job = Job(
            stream_id=None, frame_index=index, clip=ring.clip(), frame=frames[-1], timestamp=time.time(),
            received_at=received_at, epoch=0, frames_buffered=config.frames - 1,
        )
        slot.queue.put(job)  # raises Overloaded when too many wait
        return job.future

    # --- results from the inference worker -----------------------------------------------------
    def complete_batch(
        self, slot: ModelSlot, jobs: list[Job], scores: ClipScores | None, error: BaseException | None
    ) -> None:
        """Sink of a model's inference worker (its thread): score, record, publish, answer."""
        for i, job in enumerate(jobs):
            stream = self._streams.get(job.stream_id) if job.stream_id is not None else None
            try:
                if scores is None:
                    self._finish_dropped(stream, job, DropReason.INFERENCE_ERROR)
                    continue
                background = scores.background
                scored = slot.scorer.score(
                    stream_id=job.stream_id, frame_index=job.frame_index, epoch=job.epoch,
                    score=float(scores.score[i]), y=int(scores.y[i]), x=int(scores.x[i]),
                    errors=scores.errors[i].numpy(), background=None if background is None else float(background[i]),
                    frame_size=job.frame_size, timestamp=job.timestamp, received_at=job.received_at,
                    frames_buffered=job.frames_buffered,
                )
                self._finish_scored(stream, job, scored)
            except Exception:  # never leave a request waiting because of a bug in one result
                log.exception("could not complete frame %s of stream %s", job.frame_index, job.stream_id)
                self._finish_dropped(stream, job, DropReason.INFERENCE_ERROR)

    def drop_jobs(self, jobs: list[Job], reason: DropReason) -> None:
        for job in jobs:
            stream = self._streams.get(job.stream_id) if job.stream_id is not None else None
            self._finish_dropped(stream, job, reason)

    def _finish_scored(self, stream: _Stream | None, job: Job, scored: ScoredFrame) -> None:
        result = scored.result
        if job.stream_id is None:
            self.metrics.stateless_requests.labels("scored").inc()
            self.metrics.frame_latency.observe(result.latency_ms / 1000)
            _resolve(job.future, ClipOutcome(result, scored.errors))
            return
        if stream is not None:
            kept = None
            with stream.lock:
                stream.pending -= 1
                stream.scored += 1
                stream.last_result = result
                if not stream.closed:  # under the stream lock: _discard forgets its history after closing it
                    kept = job.kept if isinstance(job, _StreamJob) else None
                    if kept is None:  # submit() guessed the frame would only warm the ring
                        kept = keep_frame(job.frame, self.heatmap_frame_max_side)
                    self.history.add(stream.id, HeatmapRecord(result, scored.errors, kept))
                if stream.state in (StreamState.WARMING, *_SCORING) and job.epoch == stream.ring.epoch:
                    learning = result.calibration == CalibrationStatus.LEARNING
                    stream.state = StreamState.LEARNING if learning else StreamState.RUNNING
                    stream.state_reason = None
                closed = stream.closed
            if not closed:
                self.metrics.frames_scored.labels(job.stream_id).inc()
                if result.is_anomaly:
                    self.metrics.anomalies.labels(job.stream_id).inc()
                if self.events is not None and kept is not None:
                    jpeg = clip_jpeg(kept) if self.events.frame_memory_bytes > 0 else None
                    self.events.observe(result, job.epoch, scored.errors, kept, jpeg)
        self.metrics.frame_latency.observe(result.latency_ms / 1000)
        self.publish(result)
        _resolve(job.future, result)

    def _finish_dropped(self, stream: _Stream | None, job: Job, reason: DropReason) -> None:
        result = FrameResult(
            stream_id=job.stream_id, frame_index=job.frame_index, status="dropped", timestamp=job.timestamp,
            latency_ms=(time.monotonic() - job.received_at) * 1000, frame_width=job.frame_size[0],
            frame_height=job.frame_size[1], frames_buffered=job.frames_buffered, reason=reason,
        )
        if job.stream_id is None:
            self.metrics.stateless_requests.labels(reason).inc()
            _resolve(job.future, ClipOutcome(result, None))
            return
        if stream is not None:
            with stream.lock:
                stream.pending -= 1
                stream.dropped += 1
                stream.dropped_by_reason[reason] = stream.dropped_by_reason.get(reason, 0) + 1
                closed = stream.closed  # a deleted stream's series are gone: its DELETE answer counts these
            if not closed:
                self.metrics.dropped(job.stream_id, reason)
        _resolve(job.future, result)

    # --- heatmaps ------------------------------------------------------------------------------
    def heatmap_record(self, stream_id: str, frame_index: int | None = None) -> HeatmapRecord:
        stream = self._get(stream_id)
        history = self.history.records(stream_id)
        if not history:
            with stream.lock:
                scored = stream.scored
            if scored:  # all evicted by the total budget (other streams' newer frames)
                raise HeatmapNotAvailable(
                    f"none of the {scored} scored frames of stream {stream_id!r} is kept any more: "
                    "evicted by the heatmap history byte budget"
                )
            raise HeatmapNotAvailable(f"stream {stream_id!r} has no scored frame yet")
        if frame_index is None:
            return history[-1]
        for record in history:
            if record.result.frame_index == frame_index:
                return record
        kept = ", ".join(str(r.result.frame_index) for r in history)
        raise HeatmapNotAvailable(
            f"frame {frame_index} of stream {stream_id!r} is not among the last {len(history)} scored frames ({kept})"
        )

    # --- helpers ------------------------------------------------------------------------------
    def _get(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamNotFound(f"no stream {stream_id!r}")
        return stream

    def _discard(self, stream_id: str) -> _Stream | None:
        with self._lock:
            stream = self._streams.pop(stream_id, None)
            if stream is not None and not any(s.name == stream.name for s in self._streams.values()):
                self._named.discard(stream.name)
        if stream is None:
            return None
        with stream.lock:
            stream.closed = True
            stream.state = StreamState.STOPPED
        self.history.forget(stream_id)  # after closing: no scored frame is added to it any more
        stream.slot.scorer.forget(stream_id)
        if self.events is not None:
            self.events.remove_stream(stream_id)  # an open event ends ("stream_deleted")
        self.on_stream_deleted(stream_id)
        return stream

    def _require_ready(self) -> None:
        reason = self.readiness()
        if reason is not None:
            raise NotReady(f"not ready to score frames: {reason}")


class StreamSink:
    """One stream's producer interface in the shape service.sources.FrameSink expects: the one adapter
    between a frame producer (a live source) and the manager.

    submit_frame keeps at most `max_in_flight` frames submitted and not yet answered (waiting, up to
    `result_timeout_s`, for the oldest before submitting another), so a slow model makes the source
    drop stale frames before they are resized instead of the manager dropping them as "overload".
    Only "reconnecting" and "failed" are forwarded as states: the manager moves
    starting/reconnecting -> warming -> running by itself as frames arrive. A stream deleted
    meanwhile makes reset/set_state no-ops (submit_frame raises StreamNotFound/StreamClosed).
    """

    FORWARDED_STATES = (StreamState.RECONNECTING, StreamState.FAILED)

    def __init__(self, manager: StreamManager, stream_id: str, *, max_in_flight: int = 2,
                 result_timeout_s: float = 30.0) -> None:
        self.manager = manager
        self.stream_id = stream_id
        self.max_in_flight = max(1, max_in_flight)
        self.result_timeout_s = result_timeout_s
        self._in_flight: list[Future[FrameResult]] = []

    def submit_frame(self, frame: np.ndarray, timestamp: float) -> Future[FrameResult]:
        self._in_flight = [f for f in self._in_flight if not f.done()]
        if len(self._in_flight) >= self.max_in_flight:
            oldest = self._in_flight.pop(0)
            with contextlib.suppress(Exception):  # answered as dropped or timed out: either way, go on
                oldest.result(timeout=self.result_timeout_s)
        future = self.manager.submit(self.stream_id, frame, timestamp)
        self._in_flight.append(future)
        return future

    def reset(self) -> None:
        self._in_flight.clear()
        with contextlib.suppress(StreamNotFound):  # deleted meanwhile: nothing left to reset
            self.manager.reset_buffer(self.stream_id, "live source reconnected or skipped frames")

    def set_state(self, state: str, reason: str | None = None) -> None:
        if state in self.FORWARDED_STATES:
            with contextlib.suppress(StreamNotFound):  # e.g. the final "failed" after DELETE removed it
                self.manager.set_state(self.stream_id, StreamState(state), reason)


def clip_jpeg(kept: KeptFrame) -> bytes:
    """A kept frame as JPEG for event clips (kept frames above the raw-size cap already are JPEG)."""
    if kept.encoded:
        return kept.data.tobytes()
    ok, data = cv2.imencode(".jpg", kept.data, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - a uint8 image always encodes
        raise InvalidImage("the frame could not be encoded for the event clip")
    return data.tobytes()


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise InvalidImage("a frame must be a uint8 numpy array")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise InvalidImage(f"a frame must be (H, W), (H, W, 3) or (H, W, 4), got shape {frame.shape}")
    if min(frame.shape[:2]) < 1:
        raise InvalidImage(f"a frame must not be empty, got shape {frame.shape}")


__all__ = ["PUSH", "ClipOutcome", "SourceFactory", "SourceRequest", "StreamManager", "StreamSink", "StreamSource"]
