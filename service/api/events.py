"""/v1/events: stored anomaly events, their snapshots and clips, labels; WS /v1/events for live changes."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ..domain import MediaNotAvailable, NotReady
from ..eventtypes import EventQuery, EventRecord, Label
from ..store.errors import EventNotFound
from .deps import Authorized, Context
from .errors import error_responses
from .schemas import EventList, EventOut, StreamOut, ThresholdAdviceOut, UpdateEvent
from .streams import require_utf8
from .ws import admit

router = APIRouter(tags=["events"])
authorized = APIRouter(prefix="/v1", tags=["events"], dependencies=[Authorized])

NOT_FOUND = error_responses({404: "no such event", 503: "the event store is not open"})
LabelFilter = Literal["true_alarm", "false_alarm", "none"]


def _store(context):  # noqa: ANN001, ANN202 - a ServiceContext -> EventStore
    if context.store is None:
        raise NotReady("the event store is not open: " + (context.store_error or "starting"))
    return context.store


def _get(context, event_id: str) -> EventRecord:  # noqa: ANN001
    record = _store(context).get(event_id)
    if record is None:
        raise EventNotFound(event_id)
    return record


def _query(stream: str | None, since: datetime | None, until: datetime | None, min_peak: float | None,
           label: LabelFilter | None, limit: int, cursor: str | None) -> EventQuery:
    if since is not None and until is not None and until <= since:
        raise RequestValidationError([{"type": "range", "loc": ("query", "until"),
                                       "msg": f"until ({until.isoformat()}) must be after since ({since.isoformat()})"}])
    return EventQuery(
        stream_id=stream, since=since.timestamp() if since else None, until=until.timestamp() if until else None,
        min_peak=min_peak, label=Label(label) if label not in (None, "none") else None, unlabeled=label == "none",
        limit=limit, cursor=cursor,
    )


async def _list(context, query: EventQuery) -> EventList:  # noqa: ANN001
    records, cursor = await run_in_threadpool(_store(context).list, query)
    return EventList(data=[EventOut.from_domain(r) for r in records], count=len(records), next_cursor=cursor)


Since = Annotated[datetime | None, Query(description="events that started at or after (ISO 8601 or epoch seconds)")]
Until = Annotated[datetime | None, Query(description="events that started before")]
MinPeak = Annotated[float | None, Query(ge=-1000, le=1000, description="peak smoothed z at least")]
LabelQuery = Annotated[LabelFilter | None, Query(description="true_alarm, false_alarm, or none (unlabelled)")]
Limit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]
LIST_ERRORS = error_responses({422: "bad filter (a reversed time range, an unknown label, a bad cursor)",
                               503: "the event store is not open"})


@authorized.get("/events", response_model=EventList, responses=LIST_ERRORS)
async def list_events(context: Context, stream: Annotated[str | None, Query(max_length=100)] = None,
                      since: Since = None, until: Until = None, min_peak: MinPeak = None,
                      label: LabelQuery = None, limit: Limit = 50, cursor: Cursor = None) -> EventList:
    """Newest first, `limit` at a time; follow `next_cursor` for older ones."""
    return await _list(context, _query(stream, since, until, min_peak, label, limit, cursor))


@authorized.get("/streams/{stream_id}/events", response_model=EventList, responses=LIST_ERRORS)
async def stream_events(stream_id: str, context: Context, since: Since = None, until: Until = None,
                        min_peak: MinPeak = None, label: LabelQuery = None, limit: Limit = 50,
                        cursor: Cursor = None) -> EventList:
    """The events of one stream (also of a deleted one: events outlive their stream)."""
    return await _list(context, _query(stream_id, since, until, min_peak, label, limit, cursor))


@authorized.get("/streams/{stream_id}/threshold", response_model=ThresholdAdviceOut,
                responses=error_responses({404: "no such stream", 503: "the event store is not open"}))
async def threshold_advice(
    stream_id: str, context: Context,
    target_per_hour: Annotated[float, Query(gt=0, le=1000, description="false alarms per hour you accept")] = 1.0,
) -> ThresholdAdviceOut:
    """Running counts of the stream's labelled true and false alarms, and a threshold that would have kept
    its false alarms to `target_per_hour`; apply it with PATCH /v1/streams/{id} {"threshold": ...}."""
    info = context.manager.get(stream_id)
    store = _store(context)
    records = await run_in_threadpool(_all_events, store, stream_id)
    threshold = StreamOut.from_domain(info).threshold or 0.0
    hours = max((time.time() - info.created_at) / 3600, 1 / 60)
    false = sorted((r.peak_score for r in records if r.label == Label.FALSE_ALARM), reverse=True)
    true = [r.peak_score for r in records if r.label == Label.TRUE_ALARM]
    allowed = int(target_per_hour * hours)
    suggested = kept = None
    if len(false) > allowed:
        # Just above the peak of the first false alarm beyond the allowance: it and the lower ones would not fire.
        suggested = round(max(false[allowed] + 0.01, threshold), 3)
        kept = sum(p >= suggested for p in true)
        explanation = (f"{len(false)} false alarms in {hours:.1f} h; at {suggested} at most {allowed} of them would "
                       f"have fired, and {kept} of {len(true)} true alarms")
    else:
        explanation = (f"{len(false)} false alarms in {hours:.1f} h: within the target of {target_per_hour:g} per "
                       "hour at the current threshold")
    return ThresholdAdviceOut(
        threshold=threshold, true_alarms=len(true), false_alarms=len(false),
        unlabeled=sum(r.label is None for r in records), hours=round(hours, 3),
        false_alarms_per_hour=round(len(false) / hours, 3), target_per_hour=target_per_hour, suggested=suggested,
        true_alarms_kept=kept, explanation=explanation,
    )


def _all_events(store, stream_id: str, most: int = 10_000) -> list[EventRecord]:  # noqa: ANN001
    records: list[EventRecord] = []
    cursor = None
    while len(records) < most:
        page, cursor = store.list(EventQuery(stream_id=stream_id, limit=500, cursor=cursor))
        records += page
        if cursor is None:
            break
    return records


@authorized.get("/events/{event_id}", response_model=EventOut, responses=NOT_FOUND)
async def get_event(event_id: str, context: Context) -> EventOut:
    return EventOut.from_domain(await run_in_threadpool(_get, context, event_id))


@authorized.patch("/events/{event_id}", response_model=EventOut,
                  responses=error_responses({404: "no such event", 413: "a body larger than the server reads for a "
                                             "JSON request", 422: "invalid body (e.g. an unknown label)",
                                             503: "the event store is not open"}))
async def update_event(event_id: str, body: UpdateEvent, request: Request, context: Context) -> EventOut:
    """Label an event a true or a false alarm (`null`: no label), with a note."""
    require_utf8(await request.body())
    store = _store(context)
    current = await run_in_threadpool(_get, context, event_id)
    fields = body.model_fields_set
    label = (Label(body.label) if body.label else None) if "label" in fields else current.label
    note = body.note if "note" in fields else current.note
    return EventOut.from_domain(await run_in_threadpool(store.label, event_id, label, note))


@authorized.delete("/events/{event_id}", response_model=EventOut, responses=NOT_FOUND)
async def delete_event(event_id: str, context: Context) -> EventOut:
    """Deletes the event and its snapshot and clip."""
    return EventOut.from_domain(await run_in_threadpool(_store(context).delete, event_id))


def _media(context, path: str | None, what: str, event_id: str, error: str | None) -> Path:  # noqa: ANN001
    if path is None:
        raise MediaNotAvailable(f"event {event_id!r} has no {what}" + (f": {error}" if error else
                                                                       " (yet: it is written when the event ends)"))
    full = (context.media_dir / path).resolve()
    if not full.is_relative_to(context.media_dir.resolve()) or not full.is_file():
        raise MediaNotAvailable(f"the {what} of event {event_id!r} is gone (deleted by retention or by hand)")
    return full


@authorized.get("/events/{event_id}/snapshot.jpg", response_class=FileResponse,
                responses={200: {"content": {"image/jpeg": {}}, "description": "JPEG at the frame's size"},
                           **NOT_FOUND})
async def event_snapshot(event_id: str, context: Context,
                         clean: Annotated[bool, Query(description="the frame alone, no heatmap or box")] = False,
                         ) -> FileResponse:
    """The peak frame with the heatmap and the event's box over it (`?clean=true`: the frame alone)."""
    record = await run_in_threadpool(_get, context, event_id)
    path = record.clean_snapshot_path if clean else record.snapshot_path
    return FileResponse(_media(context, path, "snapshot", event_id, record.media_error), media_type="image/jpeg")


@authorized.get("/events/{event_id}/clip.mp4", response_class=FileResponse,
                responses={200: {"content": {"video/mp4": {}}, "description": "H.264 MP4"},
                           206: {"description": "the range asked for (Range: bytes=...)"}, **NOT_FOUND})
async def event_clip(event_id: str, context: Context) -> FileResponse:
    """From the pre-roll to the end; HTTP range requests work, so a browser can seek."""
    record = await run_in_threadpool(_get, context, event_id)
    return FileResponse(_media(context, record.clip_path, "clip", event_id, record.media_error),
                        media_type="video/mp4")


@router.websocket("/v1/events")
async def event_feed(websocket: WebSocket, context: Context,
                     stream: Annotated[str | None, Query(max_length=100)] = None) -> None:
    """One JSON message per event change: {"type": "start"|"update"|"end", "event": {...}} (the webhook
    payload, docs/alerts.md); `?stream=ID` for one stream's."""
    if await admit(websocket, context, None):
        await context.event_hub.serve(websocket, stream)
