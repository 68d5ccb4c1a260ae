"""/v1/streams: create, list, read and delete streams."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from .deps import Authorized, Context
from .schemas import CreateStream, ErrorOut, StreamList, StreamOut

router = APIRouter(prefix="/v1/streams", tags=["streams"], dependencies=[Authorized])

NOT_FOUND = {404: {"model": ErrorOut, "description": "no such stream"}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StreamOut,
    responses={422: {"description": "invalid body or unsupported source"},
               429: {"model": ErrorOut, "description": "too many open streams"}},
)
async def create_stream(body: CreateStream, context: Context) -> StreamOut:
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
