"""The JSON of an event change (one shape for webhooks and MQTT) and the receiver ids of a change.

    {"type": "start" | "update" | "end",
     "event": {"id", "stream_id", "stream_name", "model", "started_at", "ended_at", "duration_s",
               "start_frame", "end_frame", "peak_score", "peak_frame", "peak_at", "box", "frames_above",
               "threshold", "end_reason", "label", "snapshot_url", "clip_url"}}

Times are ISO 8601 UTC strings ("2024-05-01T12:00:00.250Z"); media URLs are API paths relative to
the service's base URL (receivers add their own host and token).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any

from ..eventtypes import EventChange, EventRecord
from ..settings import NotifySettings

WEBHOOK_PREFIX = "webhook:"
MQTT_RECEIVER = "mqtt"


def iso_utc(seconds: float | None) -> str | None:
    """Seconds since the epoch -> '2024-05-01T12:00:00.250Z' (milliseconds, UTC); None stays None."""
    if seconds is None:
        return None
    text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _number(value: float) -> float | None:
    # JSON has no NaN or infinity; a receiver gets null rather than a payload it cannot parse.
    return value if math.isfinite(value) else None


def _event(record: EventRecord) -> dict[str, Any]:
    box = record.box
    duration = record.duration_s
    return {
        "id": record.id,
        "stream_id": record.stream_id,
        "stream_name": record.stream_name,
        "model": record.model,
        "started_at": iso_utc(record.started_at),
        "ended_at": iso_utc(record.ended_at),
        "duration_s": None if duration is None else round(duration, 3),
        "start_frame": record.start_frame,
        "end_frame": record.end_frame,
        "peak_score": _number(record.peak_score),
        "peak_frame": record.peak_frame,
        "peak_at": iso_utc(record.peak_at),
        "box": None if box is None else {"x": box.x, "y": box.y, "w": box.w, "h": box.h},
        "frames_above": record.frames_above,
        "threshold": _number(record.threshold),
        "end_reason": None if record.end_reason is None else record.end_reason.value,
        "label": None if record.label is None else record.label.value,
        "snapshot_url": f"/v1/events/{record.id}/snapshot.jpg",
        "clip_url": f"/v1/events/{record.id}/clip.mp4",
    }


def event_payload(change: EventChange) -> dict[str, Any]:
    """The payload of one event change as a dict (see the module docstring)."""
    return {"type": change.kind.value, "event": _event(change.event)}


def payload_json(change: EventChange) -> str:
    """The payload as compact JSON text: what the outbox stores and the notifiers send byte for byte
    (the webhook signature is computed over exactly these bytes, UTF-8 encoded)."""
    return json.dumps(event_payload(change), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def webhook_urls(settings: NotifySettings) -> list[str]:
    """The configured webhook URLs, in order, without blanks or repeats."""
    found: list[str] = []
    for item in settings.webhook_urls.split(","):
        url = item.strip()
        if url and url not in found:
            found.append(url)
    return found


def webhook_receiver_id(url: str) -> str:
    """'webhook:' + the first 16 hex digits of sha256(url): stable across restarts, and no secret of
    the URL (user-info, tokens) ever lands in the outbox."""
    return WEBHOOK_PREFIX + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def receivers(settings: NotifySettings) -> list[str]:
    """The receiver ids every event change is enqueued for: one per webhook URL, and 'mqtt' when set."""
    ids = [webhook_receiver_id(url) for url in webhook_urls(settings)]
    if settings.mqtt_url.strip():
        ids.append(MQTT_RECEIVER)
    return ids
