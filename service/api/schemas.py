"""API schemas (pydantic), separate from the internal dataclasses of service/domain.py."""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

from ..domain import FrameResult, FrameStatus, StreamInfo, StreamState

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

    @field_validator("options")
    @classmethod
    def _finite_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        if _has_non_finite(options):
            raise ValueError("Input should hold only finite numbers (no NaN or Infinity)")
        return options

    def source_options(self) -> dict[str, Any]:
        """`max_fps` may be given at the top level or inside `options`; the top level wins."""
        return {**self.options, **({"max_fps": self.max_fps} if self.max_fps is not None else {})}


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

    @classmethod
    def from_domain(cls, r: FrameResult) -> FrameResultOut:
        return cls(
            stream_id=r.stream_id, frame_index=r.frame_index, status=r.status, score=r.score,
            normalized_score=r.normalized_score, smoothed_score=r.smoothed_score, threshold=r.threshold,
            is_anomaly=r.is_anomaly,
            patch=PatchOut(x=r.patch.x, y=r.patch.y, w=r.patch.w, h=r.patch.h) if r.patch else None,
            latency_ms=round(r.latency_ms, 3), timestamp=r.timestamp, frame_width=r.frame_width,
            frame_height=r.frame_height, frames_buffered=r.frames_buffered, reason=r.reason,
        )


class ScoreResultOut(FrameResultOut):
    heatmap_png_base64: str | None = Field(None, description="with ?heatmap=true: PNG at the frames' size")


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
    created_at: datetime
    last_result: FrameResultOut | None

    @classmethod
    def from_domain(cls, s: StreamInfo) -> StreamOut:
        return cls(
            id=s.id, name=s.name, source=s.source, state=s.state, state_reason=s.state_reason,
            frames_received=s.frames_received, frames_scored=s.frames_scored, frames_dropped=s.frames_dropped,
            frames_warming=s.frames_warming, frames_pending=s.frames_pending,
            created_at=datetime.fromtimestamp(s.created_at, UTC),
            last_result=FrameResultOut.from_domain(s.last_result) if s.last_result else None,
        )


class StreamList(BaseModel):
    data: list[StreamOut]
    count: int


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
