"""The values the event stages pass each other (events engine -> store -> API, notifications), and the
outbox interface between the store and the notifiers. Plain frozen dataclasses, independent of HTTP
and of the database.

    engine (service/events.py)   scored FrameResults -> EventChange (start / update / end)
    store  (service/store/)      EventRecord rows and media paths; the notification outbox
    notify (service/notify/)     webhooks and MQTT, fed from the outbox
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class EndReason(StrEnum):
    RELEASED = "released"  # the score stayed below the exit threshold for release_frames
    MAX_DURATION = "max_duration"  # split at max_event_seconds (the next event continues it)
    BUFFER_RESET = "buffer_reset"  # the stream's ring was reset (reconnect, gap, size change)
    STREAM_DELETED = "stream_deleted"
    SHUTDOWN = "shutdown"


class Label(StrEnum):
    TRUE_ALARM = "true_alarm"
    FALSE_ALARM = "false_alarm"


class ChangeKind(StrEnum):
    START = "start"
    UPDATE = "update"  # a new peak
    END = "end"


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class EventRecord:
    """One anomaly event. Times are seconds since the epoch (UTC); frame indices are the stream's."""

    id: str  # 32 hex characters (uuid4)
    stream_id: str
    stream_name: str
    model: str
    started_at: float
    start_frame: int
    peak_score: float  # highest smoothed z-score
    peak_frame: int
    peak_at: float
    box: Box | None  # union of the top windows of the frames above the threshold, frame pixels
    frames_above: int  # scored frames at or above the threshold
    threshold: float
    ended_at: float | None = None  # None while open
    end_frame: int | None = None
    end_reason: EndReason | None = None
    label: Label | None = None
    note: str | None = None
    snapshot_path: str | None = None  # relative to the media folder: heatmap overlay + box
    clean_snapshot_path: str | None = None
    clip_path: str | None = None
    media_bytes: int = 0
    media_error: str | None = None  # why a snapshot or clip is missing (e.g. disk full)

    @property
    def open(self) -> bool:
        return self.ended_at is None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


@dataclass(frozen=True)
class EventChange:
    kind: ChangeKind
    event: EventRecord


@dataclass(frozen=True)
class EventQuery:
    """GET /v1/events filters; newest first (started_at, id descending)."""

    stream_id: str | None = None
    since: float | None = None  # started_at >= since
    until: float | None = None  # started_at < until
    min_peak: float | None = None
    label: Label | None = None
    unlabeled: bool = False
    limit: int = 50
    cursor: str | None = None  # opaque, from the previous page


@dataclass(frozen=True)
class Notification:
    """One message to deliver to one receiver, exactly once (the outbox row)."""

    id: int
    receiver: str  # e.g. "webhook:<url digest>" or "mqtt"
    event_id: str
    kind: ChangeKind
    payload: str  # JSON text
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class Outbox(Protocol):
    """The durable outbox the notifiers read (implemented by the store). Thread-safe."""

    def enqueue(self, event_id: str, kind: ChangeKind, payload: str, receivers: list[str]) -> None:
        """One row per receiver, written in the same transaction as the event change."""

    def due(self, receiver_prefix: str, now: float, limit: int) -> list[Notification]:
        """Undelivered rows of receivers starting with `receiver_prefix` whose next attempt is due, oldest first."""

    def delivered(self, notification_id: int) -> None:
        """Mark delivered (never returned by `due` again)."""

    def failed(self, notification_id: int, error: str, next_attempt_at: float | None) -> None:
        """Count a failed attempt; None as next attempt: given up (kept, not retried)."""

    def depth(self) -> int:
        """Undelivered rows (for the outbox-depth gauge)."""
