"""Internal values passed between the pipeline stages, and the domain errors.

These are plain frozen dataclasses, independent of HTTP: the API turns them into pydantic schemas
(service/api/schemas.py) and maps the errors to status codes in one place (service/api/errors.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


class StreamState(StrEnum):
    """The one vocabulary of a stream's (and its live source's) state."""

    STARTING = "starting"  # created; no frame yet
    WARMING = "warming"  # fewer than T frames in the ring (at start, after a reset or a size change)
    RUNNING = "running"  # every frame is scored
    LEARNING = "learning"  # every frame is scored, but no alarm until it has learned its calibration
    RECONNECTING = "reconnecting"  # a live source lost its camera and is reopening it
    STOPPED = "stopped"  # deleted, or the service is shutting down
    FAILED = "failed"  # a live source gave up (refused URL, max_attempts reached)


class DropReason(StrEnum):
    """Why a frame was not scored: the `reason` of a dropped result and the label of
    vad_frames_dropped_total. Every accepted frame ends scored, warming, or dropped with one of these."""

    # In the stream manager, after the frame was accepted:
    OVERLOAD = "overload"  # a newer frame of the same stream arrived while this one still waited
    STREAM_DELETED = "stream_deleted"
    SHUTDOWN = "shutdown"
    INFERENCE_ERROR = "inference_error"
    # In a live source, before the frame reaches the stream:
    STALE = "stale"  # a newer frame arrived before the stream took this one, or it aged out
    MAX_FPS = "max_fps"  # thinned to the stream's max_fps
    SINK_ERROR = "sink_error"  # the stream refused it (e.g. deleted meanwhile)
    DECODE_ERROR = "decode_error"  # a packet the decoder could not decode


FrameStatus = Literal["warming", "scored", "dropped"]


@dataclass(frozen=True)
class Patch:
    """Top-scoring window in the original frame's pixel coordinates."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class FrameResult:
    """What became of one frame. Score fields are None unless status == "scored"."""

    stream_id: str | None
    frame_index: int
    status: FrameStatus
    timestamp: float  # the frame's capture/receipt time, seconds since the epoch
    latency_ms: float  # from receipt to this result
    frame_width: int
    frame_height: int
    score: float | None = None  # raw patch score (max window mean of E²)
    normalized_score: float | None = None  # causal z-score from the weights' calibration
    smoothed_score: float | None = None  # trailing mean of the last CAUSAL_WINDOW normalised scores
    threshold: float | None = None
    is_anomaly: bool | None = None  # smoothed_score >= threshold
    patch: Patch | None = None
    frames_buffered: int = 0  # frames in the stream's ring when this one arrived (T needed)
    reason: str | None = None  # drop reason, or why the buffer was reset
    calibration: str | None = None  # what normalised the score (service.calibration.CalibrationStatus)
    threshold_score: float | None = None  # the raw score at the threshold (heatmap colour scale)


@dataclass(frozen=True)
class StreamInfo:
    """A snapshot of one stream for the API."""

    id: str
    name: str
    source: str
    state: StreamState
    state_reason: str | None
    created_at: float
    frames_received: int
    frames_warming: int
    frames_scored: int
    frames_dropped: int
    frames_pending: int
    last_result: FrameResult | None
    model: str = ""
    scoring: object | None = None  # service.score.ScoringView (None before the model is known)
    events: object | None = None  # service.events.EventParams
    open_event: str | None = None
    # The manager's drops (frames_dropped) and, for a live stream, its source's, by reason.
    frames_dropped_by_reason: Mapping[str, int] = field(default_factory=dict)


class ServiceError(Exception):
    """Base of the errors a client can cause or must be told about; the message is shown to them."""


class StreamNotFound(ServiceError):
    pass


class StreamLimitReached(ServiceError):
    pass


class StreamClosed(ServiceError):
    """A frame for a stream that is stopped or being deleted."""


class UnsupportedSource(ServiceError):
    pass


class InvalidRegion(ServiceError):
    """An ignore region that is not a polygon inside the frame."""


class UnknownModel(ServiceError):
    """A model name that is not in the models folder."""


class ModelUnavailable(ServiceError):
    """A model in the folder that cannot be loaded (a corrupt file, another error)."""


class MediaNotAvailable(ServiceError):
    """An event's snapshot or clip that was not (or not yet) written, or was deleted."""


class PayloadTooLarge(ServiceError):
    pass


class ImageTooLarge(ServiceError):
    """Declared pixel count above the cap (checked from the header, before decoding)."""


class InvalidImage(ServiceError):
    pass


class InvalidRequest(ServiceError):
    """A malformed request body other than an image (e.g. a broken multipart form)."""


class UploadTimeout(ServiceError):
    """The request body did not arrive within the upload timeout."""


class Unauthorized(ServiceError):
    pass


class UnsupportedMediaType(ServiceError):
    pass


class HeatmapNotAvailable(ServiceError):
    pass


class NotReady(ServiceError):
    """The model is not loaded or the worker is not running."""


class Overloaded(ServiceError):
    """Too many stateless requests waiting; the client should retry later."""


class ResultTimeout(ServiceError):
    pass
