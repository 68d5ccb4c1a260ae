"""/v1/streams: create, list, read and delete streams."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from .deps import Authorized, Context
from .errors import error_responses
from .schemas import CreateStream, StreamList, StreamOut

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
        "unsupported or refused source",
        429: "max_streams streams already open",
    }),
)
async def create_stream(body: CreateStream, request: Request, context: Context) -> StreamOut:
    require_utf8(await request.body())
    # A live source's start() may open a connection: keep it off the event loop.
    info = await run_in_threadpool(context.manager.create, body.source, body.name, body.source_options())
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
