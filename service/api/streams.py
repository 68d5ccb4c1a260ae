"""/v1/streams: create, list, read, change and delete streams, and their calibration."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from ..streams import ScoringRequest
from .deps import Authorized, Context
from .errors import error_responses
from .schemas import CalibrationOut, CreateStream, StreamList, StreamOut, UpdateStream

router = APIRouter(prefix="/v1/streams", tags=["streams"], dependencies=[Authorized])

NOT_FOUND = error_responses({404: "no such stream"})


def require_utf8(body: bytes) -> None:
    """JSON bodies are UTF-8 (RFC 8259). FastAPI's parser also takes UTF-16 and UTF-32 (a body it
    cannot decode at all is answered by errors.http_error); refuse them the same way."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"not valid UTF-8 JSON ({exc.reason} at byte {exc.start})"
        raise RequestValidationError([{"type": "utf8", "loc": ("body",), "msg": message}]) from None


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StreamOut,
    responses=error_responses({
        413: "a body larger than the server reads for a JSON request",
        422: "invalid body (not UTF-8 JSON, unknown field, a number that is not finite, ...), "
        "unsupported or refused source, unknown or unusable model, an ignore region that is not a polygon",
        429: "max_streams streams already open",
        503: "the default model is not loaded",
    }),
)
async def create_stream(body: CreateStream, request: Request, context: Context) -> StreamOut:
    require_utf8(await request.body())
    scoring = ScoringRequest(
        model=body.model, threshold=body.threshold, calibration=body.calibration_choice(),
        ignore_regions=body.ignore_regions,
        events=body.events.over(context.event_defaults) if body.events is not None else None,
    )
    # The model may load on first use, and a live source's start() may open a connection: off the loop.
    info = await run_in_threadpool(context.manager.create, body.source, body.name, body.source_options(), scoring)
    return StreamOut.from_domain(info)


@router.get("", response_model=StreamList)
async def list_streams(context: Context) -> StreamList:
    streams = [StreamOut.from_domain(s) for s in context.manager.list()]
    return StreamList(data=streams, count=len(streams))


@router.get("/{stream_id}", response_model=StreamOut, responses=NOT_FOUND)
async def get_stream(stream_id: str, context: Context) -> StreamOut:
    return StreamOut.from_domain(context.manager.get(stream_id))


@router.delete("/{stream_id}", response_model=StreamOut, responses=NOT_FOUND)
async def delete_stream(stream_id: str, context: Context) -> StreamOut:
    """Stops the stream and returns its final state ("stopped") and counts."""
    info = await run_in_threadpool(context.manager.delete, stream_id)
    return StreamOut.from_domain(info)


@router.patch(
    "/{stream_id}",
    response_model=StreamOut,
    responses=error_responses({
        404: "no such stream", 409: "the stream is stopping",
        413: "a body larger than the server reads for a JSON request",
        422: "invalid body, or an ignore region outside the stream's frames",
    }),
)
async def update_stream(stream_id: str, body: UpdateStream, request: Request, context: Context) -> StreamOut:
    """Change the threshold (`null`: the model's again), the ignore regions (`[]`: none) or event parameters
    (the fields given) from the next frame."""
    require_utf8(await request.body())
    changes = body.changes()
    if changes.get("events") is not None:
        current = context.events.params(stream_id) or context.event_defaults
        changes["events"] = body.events.over(current)
    else:
        changes.pop("events", None)
    return StreamOut.from_domain(context.manager.update(stream_id, changes))


@router.get("/{stream_id}/calibration", response_model=CalibrationOut, responses=NOT_FOUND)
async def get_calibration(stream_id: str, context: Context) -> CalibrationOut:
    """What normalises the stream's scores: mode, status (learning and how far), statistics, when learned."""
    return _calibration(context.manager.get(stream_id))


@router.post("/{stream_id}/calibration", response_model=CalibrationOut, responses=NOT_FOUND)
async def relearn_calibration(stream_id: str, context: Context) -> CalibrationOut:
    """Learn the stream's normal again from its next `calibration_frames` scored frames (no alarm meanwhile);
    the stored calibration of its name is replaced when done."""
    return _calibration(await run_in_threadpool(context.manager.relearn_calibration, stream_id))


@router.delete("/{stream_id}/calibration", response_model=CalibrationOut, responses=NOT_FOUND)
async def delete_calibration(stream_id: str, context: Context) -> CalibrationOut:
    """Back to the model's calibration; the calibration stored under the stream's name is deleted."""
    return _calibration(await run_in_threadpool(context.manager.forget_calibration, stream_id))


def _calibration(info) -> CalibrationOut:  # noqa: ANN001 - a StreamInfo
    out = StreamOut.from_domain(info).calibration
    assert out is not None  # every open stream has one
    return out
