"""API schemas (pydantic), separate from the internal dataclasses of service/domain.py."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

from ..calibration import CalibrationChoice, CalibrationMode, CalibrationView
from ..domain import FrameResult, FrameStatus, StreamInfo, StreamState
from ..events import EventParams
from ..eventtypes import EventRecord
from ..models import ModelInfo
from ..regions import MAX_POINTS, MAX_REGIONS
from ..score import ScoringView

# Every float a client sends (query parameters, JSON fields) is pydantic's FiniteFloat: NaN, Infinity
# and numbers that overflow to infinity (1e400) are refused with 422 "Input should be a finite number".
# Response fields stay plain floats.


MAX_OPTION_DEPTH = 32


def _has_non_finite(value: Any) -> bool:
    """Whether a JSON value holds NaN, Infinity or an integer beyond float range; ValueError when it
    nests deeper than MAX_OPTION_DEPTH (walked with a stack: no recursion for a client to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_OPTION_DEPTH:
            raise ValueError(f"Input should nest at most {MAX_OPTION_DEPTH} levels deep")
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) > sys.float_info.max:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
    return False


Point = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2, description="[x, y] in frame pixels")]
Polygon = Annotated[list[Point], Field(max_length=MAX_POINTS, description="at least 3 points")]
IgnoreRegionsIn = Annotated[
    list[Polygon],
    Field(max_length=MAX_REGIONS, description="polygons in frame pixels whose pixels are left out of the score "
          "and the heatmap (a road with traffic, a clock, a tree in the wind)"),
]
Threshold = Annotated[
    FiniteFloat,
    Field(ge=-100, le=100, description="alarm threshold on the smoothed z-score (default: the model's); see "
          "docs/cameras.md for the false-alarm rate it means"),
]


class EventParamsIn(BaseModel):
    """A stream's event parameters; the fields not given keep the service's defaults (VAD_EVENT_*)."""

    model_config = ConfigDict(extra="forbid")

    min_frames: int | None = Field(None, ge=1, le=10_000)
    hysteresis: FiniteFloat | None = Field(None, ge=0, le=100)
    release_frames: int | None = Field(None, ge=1, le=100_000)
    cooldown_seconds: FiniteFloat | None = Field(None, ge=0, le=86_400)
    max_seconds: FiniteFloat | None = Field(None, gt=0, le=86_400)
    pre_roll_seconds: FiniteFloat | None = Field(None, ge=0, le=60)

    def over(self, base: EventParams) -> EventParams:
        return replace(base, **{k: v for k, v in self.model_dump().items() if v is not None})


class FixedCalibration(BaseModel):
    """Fixed statistics of the log patch score on normal frames: z = (log score - mu) / sigma."""

    model_config = ConfigDict(extra="forbid")

    mu: FiniteFloat = Field(ge=-100, le=100)
    sigma: FiniteFloat = Field(gt=0, le=100)


CalibrationIn = Annotated[
    Literal["auto", "learn", "model"] | FixedCalibration,
    Field(description='"auto" (default: the model\'s calibration, learning its own when the first frames are '
          'out of the model\'s domain), "learn" (no alarm until it learned its own), "model", or '
          '{"mu": ..., "sigma": ...}'),
]


class CreateStream(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "push", min_length=1, max_length=2048,
        description='"push" (frames arrive by POST /v1/streams/{id}/frames) or a live source URL',
    )
    name: str | None = Field(None, min_length=1, max_length=200, description="a label for people; default: the id")
    max_fps: FiniteFloat | None = Field(
        None, gt=0, le=240, description="live sources: score at most this many frames per second, thinned evenly"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="live-source options, passed through")
    model: str | None = Field(
        None, min_length=1, max_length=200, description="a model of GET /v1/models (default: the default model)"
    )
    threshold: Threshold | None = None
    calibration: CalibrationIn | None = None
    ignore_regions: IgnoreRegionsIn = Field(default_factory=list)
    events: EventParamsIn | None = Field(None, description="when its events open and close (default: VAD_EVENT_*)")

    @field_validator("options")
    @classmethod
    def _finite_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        if _has_non_finite(options):
            raise ValueError("Input should hold only finite numbers (no NaN or Infinity)")
        return options

    def source_options(self) -> dict[str, Any]:
        """`max_fps` may be given at the top level or inside `options`; the top level wins."""
        return {**self.options, **({"max_fps": self.max_fps} if self.max_fps is not None else {})}

    def calibration_choice(self) -> CalibrationChoice | None:
        if self.calibration is None:
            return None
        if isinstance(self.calibration, FixedCalibration):
            return CalibrationChoice(CalibrationMode.FIXED, self.calibration.mu, self.calibration.sigma)
        return CalibrationChoice(CalibrationMode(self.calibration))


class UpdateStream(BaseModel):
    """The fields given change; the others stay. `"threshold": null` goes back to the model's."""

    model_config = ConfigDict(extra="forbid")

    threshold: Threshold | None = None
    ignore_regions: IgnoreRegionsIn | None = None
    events: EventParamsIn | None = Field(None, description="the fields given change; the others stay")

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class PatchOut(BaseModel):
    x: int
    y: int
    w: int
    h: int


class FrameResultOut(BaseModel):
    stream_id: str | None = Field(description="null for POST /v1/score")
    frame_index: int = Field(description="0-based index of the frame in its stream")
    status: FrameStatus
    score: float | None = Field(None, description="raw patch score (max window mean of the squared error)")
    normalized_score: float | None = Field(
        None, description="causal z-score: log score normalised by the backend's calibration"
    )
    smoothed_score: float | None = Field(
        None, description="trailing mean of the stream's last 5 normalised scores; is_anomaly compares it"
    )
    threshold: float | None = None
    is_anomaly: bool | None = Field(None, description="smoothed_score >= threshold; null unless scored")
    patch: PatchOut | None = Field(None, description="top-scoring window in original frame pixels")
    latency_ms: float = Field(description="receipt to result, milliseconds")
    timestamp: float = Field(description="frame time, seconds since the epoch")
    frame_width: int
    frame_height: int
    frames_buffered: int = Field(description="frames already in the ring buffer when this one arrived")
    reason: str | None = Field(None, description="why dropped, or why the buffer was reset")
    calibration: Literal["checking", "model", "learning", "learned", "fixed"] | None = Field(
        None, description="what normalised the score: the model's calibration, the stream's learned or fixed one; "
        "checking/learning: no alarm yet (null for POST /v1/score)",
    )

    @classmethod
    def from_domain(cls, r: FrameResult) -> FrameResultOut:
        return cls(
            stream_id=r.stream_id, frame_index=r.frame_index, status=r.status, score=r.score,
            normalized_score=r.normalized_score, smoothed_score=r.smoothed_score, threshold=r.threshold,
            is_anomaly=r.is_anomaly,
            patch=PatchOut(x=r.patch.x, y=r.patch.y, w=r.patch.w, h=r.patch.h) if r.patch else None,
            latency_ms=round(r.latency_ms, 3), timestamp=r.timestamp, frame_width=r.frame_width,
            frame_height=r.frame_height, frames_buffered=r.frames_buffered, reason=r.reason,
            calibration=r.calibration,
        )


class ScoreResultOut(FrameResultOut):
    heatmap_png_base64: str | None = Field(None, description="with ?heatmap=true: PNG at the frames' size")


class StatisticsOut(BaseModel):
    mu: float = Field(description="mean (or median) of the log patch score on normal frames")
    sigma: float = Field(description="its spread; z = (log score - mu) / sigma")


class CalibrationOut(BaseModel):
    mode: Literal["auto", "learn", "model", "fixed"]
    status: Literal["checking", "model", "learning", "learned", "fixed"]
    progress: float = Field(description="learning: share of calibration_frames seen (1 otherwise)")
    frames_learned: int = Field(description="learning: scored frames so far; learned: frames it learned from")
    frames_needed: int
    statistics: StatisticsOut = Field(description="what normalises the stream's scores now")
    learned_at: datetime | None = None
    learned_z_p99: float | None = Field(None, description="99th percentile z of the frames it learned from")
    learned_z_max: float | None = None
    reason: str | None = Field(None, description="why auto switched to learning, or a stored calibration was not used")

    @classmethod
    def from_domain(cls, v: CalibrationView) -> CalibrationOut:
        learned = v.learned
        return cls(
            mode=v.mode, status=v.status, progress=v.progress, frames_learned=v.frames_learned,
            frames_needed=v.frames_needed, statistics=StatisticsOut(mu=v.log_mean, sigma=v.log_std),
            learned_at=datetime.fromtimestamp(learned.learned_at, UTC) if learned else None,
            learned_z_p99=learned.z_p99 if learned else None, learned_z_max=learned.z_max if learned else None,
            reason=v.reason,
        )


class StreamOut(BaseModel):
    id: str
    name: str
    source: str
    state: StreamState
    state_reason: str | None
    frames_received: int
    frames_scored: int
    frames_dropped: int
    frames_warming: int
    frames_pending: int = Field(description="accepted, waiting for the model")
    frames_dropped_by_reason: dict[str, int] = Field(
        default_factory=dict,
        description="frames not scored, by reason: the service's (overload, inference_error, ...; they make up "
        "frames_dropped) and, for a camera, its source's before the stream (stale, max_fps, decode_error)",
    )
    created_at: datetime
    last_result: FrameResultOut | None
    model: str = Field(description="the model scoring it (GET /v1/models)")
    threshold: float | None = Field(None, description="the alarm threshold in use on the smoothed z-score")
    threshold_is_default: bool = Field(True, description="whether it follows the model's threshold")
    calibration: CalibrationOut | None = None
    ignore_regions: list[list[list[float]]] = Field(default_factory=list)
    domain_z: float | None = Field(
        None, description="median distance of the recent frames from the model's scene (background z)"
    )
    warnings: list[str] = Field(default_factory=list, description="e.g. out of domain, with the fix")
    events: dict[str, float] | None = Field(None, description="its event parameters")
    open_event: str | None = Field(None, description="the id of its open event, if any")

    @classmethod
    def from_domain(cls, s: StreamInfo) -> StreamOut:
        view = s.scoring if isinstance(s.scoring, ScoringView) else None
        return cls(
            id=s.id, name=s.name, source=s.source, state=s.state, state_reason=s.state_reason,
            frames_received=s.frames_received, frames_scored=s.frames_scored, frames_dropped=s.frames_dropped,
            frames_warming=s.frames_warming, frames_pending=s.frames_pending,
            frames_dropped_by_reason=dict(s.frames_dropped_by_reason),
            created_at=datetime.fromtimestamp(s.created_at, UTC),
            last_result=FrameResultOut.from_domain(s.last_result) if s.last_result else None,
            model=s.model,
            threshold=view.threshold if view else None,
            threshold_is_default=view.threshold_is_default if view else True,
            calibration=CalibrationOut.from_domain(view.calibration) if view else None,
            ignore_regions=view.regions.as_lists() if view else [],
            domain_z=round(view.domain_z, 3) if view and view.domain_z is not None else None,
            warnings=list(view.warnings) if view else [],
            events=asdict(s.events) if s.events is not None else None,
            open_event=s.open_event,
        )


class StreamList(BaseModel):
    data: list[StreamOut]
    count: int


class ModelOut(BaseModel):
    name: str
    path: str
    default: bool
    status: Literal["available", "loaded", "error", "removed"] = Field(
        description="available: not loaded yet (loads when a stream uses it); removed: the file is gone but streams "
        "still use it"
    )
    error: str | None = None
    note: str | None = None
    size_bytes: int
    config: dict[str, Any] | None = None
    training: dict[str, Any] = Field(default_factory=dict, description="what it was trained on (from its metadata)")
    calibration: dict[str, Any] | None = Field(None, description="its calibration on held-out normal frames")
    backend: str | None = Field(None, description="loaded: the backend running it")
    precision: str | None = None
    threshold: float | None = None

    @classmethod
    def from_domain(cls, m: ModelInfo) -> ModelOut:
        return cls(
            name=m.name, path=m.path, default=m.default, status=m.status, error=m.error, note=m.note,
            size_bytes=m.size_bytes, config=m.config, training=m.training, calibration=m.calibration,
            backend=m.backend, precision=m.precision, threshold=m.threshold,
        )


class ModelList(BaseModel):
    data: list[ModelOut]
    count: int


class ReloadOut(BaseModel):
    added: list[str]
    changed: list[str]
    removed: list[str]
    models: ModelList


class ErrorOut(BaseModel):
    """The body of every error answer, validation errors included."""

    detail: str = Field(description="what went wrong, for people", examples=["no stream 'nope'"])


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    status: Literal["ready", "not ready"]
    reason: str | None = None
    weights: str
    device: str | None = None
    backend: str | None = None
    precision: str | None = None
    threshold: float | None = None
    calibration: str | None = Field(
        None, description="where the causal z-score's statistics come from: 'weights', or this backend's record"
    )
    config: dict[str, Any] | None = None
    model_errors: dict[str, str] = Field(
        default_factory=dict, description="models of the models folder that cannot be used, and why (the "
        "others, and the default model, are not affected)",
    )
    event_store: str = Field(
        "ok", description="ok, or why events are not stored now (scoring goes on: events wait in memory while "
        "the database is unreachable)",
    )


class BoxOut(BaseModel):
    x: int
    y: int
    w: int
    h: int


class EventOut(BaseModel):
    """One anomaly event (see docs/events.md)."""

    id: str
    stream_id: str
    stream_name: str
    model: str
    open: bool = Field(description="still going on (no end yet)")
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    start_frame: int
    end_frame: int | None
    peak_score: float = Field(description="highest smoothed z-score")
    peak_frame: int
    peak_at: datetime
    box: BoxOut | None = Field(description="union of the top windows of its frames at or above the threshold")
    frames_above: int = Field(description="scored frames at or above the threshold")
    threshold: float
    end_reason: Literal["released", "max_duration", "buffer_reset", "stream_deleted", "shutdown"] | None
    label: Literal["true_alarm", "false_alarm"] | None
    note: str | None
    snapshot_url: str | None = Field(description="the peak frame with the heatmap and the box (JPEG)")
    clean_snapshot_url: str | None
    clip_url: str | None = Field(description="H.264 MP4 from the pre-roll to the end; supports HTTP ranges")
    media_error: str | None = Field(description="why a snapshot or clip is missing")

    @classmethod
    def from_domain(cls, e: EventRecord) -> EventOut:
        def when(t: float | None) -> datetime | None:
            return None if t is None else datetime.fromtimestamp(t, UTC)

        base = f"/v1/events/{e.id}"
        return cls(
            id=e.id, stream_id=e.stream_id, stream_name=e.stream_name, model=e.model, open=e.open,
            started_at=when(e.started_at), ended_at=when(e.ended_at),
            duration_s=None if e.duration_s is None else round(e.duration_s, 3), start_frame=e.start_frame,
            end_frame=e.end_frame, peak_score=e.peak_score, peak_frame=e.peak_frame, peak_at=when(e.peak_at),
            box=BoxOut(x=e.box.x, y=e.box.y, w=e.box.w, h=e.box.h) if e.box else None,
            frames_above=e.frames_above, threshold=e.threshold,
            end_reason=e.end_reason.value if e.end_reason else None, label=e.label.value if e.label else None,
            note=e.note, snapshot_url=f"{base}/snapshot.jpg" if e.snapshot_path else None,
            clean_snapshot_url=f"{base}/snapshot.jpg?clean=true" if e.clean_snapshot_path else None,
            clip_url=f"{base}/clip.mp4" if e.clip_path else None, media_error=e.media_error,
        )


class EventList(BaseModel):
    data: list[EventOut]
    count: int
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null on the last")


class UpdateEvent(BaseModel):
    """The fields given change; `"label": null` removes the label."""

    model_config = ConfigDict(extra="forbid")

    label: Literal["true_alarm", "false_alarm"] | None = None
    note: str | None = Field(None, max_length=2000)


class ThresholdAdviceOut(BaseModel):
    """What the labels on a stream's events say about its threshold."""

    threshold: float = Field(description="the threshold in use")
    true_alarms: int
    false_alarms: int
    unlabeled: int
    hours: float = Field(description="hours the stream has been open (the false-alarm rate's denominator)")
    false_alarms_per_hour: float
    target_per_hour: float
    suggested: float | None = Field(
        description="the lowest threshold at which at most target_per_hour * hours of the labelled false alarms "
        "would have reached it (an event needs its peak at or above the threshold); null without false alarms "
        "above the target"
    )
    true_alarms_kept: int | None = Field(description="labelled true alarms whose peak reaches the suggestion")
    explanation: str
