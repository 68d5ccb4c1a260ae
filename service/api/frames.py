"""/v1/streams/{id}/frames (push one frame) and /v1/streams/{id}/heatmap (its error map as PNG)."""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import FiniteFloat
from starlette.concurrency import run_in_threadpool

from ..context import ServiceContext
from ..decode import check_content_type, decode_image
from ..domain import FrameResult
from ..heatmap import HeatmapScale, reference_level, render_heatmap
from ..history import HeatmapRecord
from .deps import Authorized, Context
from .errors import error_responses
from .schemas import ErrorOut, FrameResultOut
from .uploads import read_body_limited, wait_result

router = APIRouter(prefix="/v1/streams", tags=["frames"], dependencies=[Authorized])

# Declared, not parsed by FastAPI: the endpoint reads the raw body itself under max_upload_bytes.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "one encoded JPEG or PNG frame, at most max_upload_bytes; "
        "application/octet-stream: the format is read from the bytes",
        "content": {"image/jpeg": _BINARY, "image/png": _BINARY, "application/octet-stream": _BINARY},
    }
}


def decode_and_submit(
    context: ServiceContext, stream_id: str, data: bytes, timestamp: float | None, received_at: float
) -> Future[FrameResult]:
    frame = decode_image(data, context.settings.limits.max_pixels)
    return context.manager.submit(stream_id, frame, timestamp, received_at=received_at)


@router.post(
    "/{stream_id}/frames",
    response_model=FrameResultOut,
    openapi_extra=IMAGE_BODY,
    responses=error_responses({
        404: "no such stream",
        408: "the body did not arrive within upload_timeout_seconds",
        409: "the stream is stopped (being deleted, or the server is shutting down)",
        413: "body above max_upload_bytes or image above max_pixels",
        415: "not image/jpeg, image/png or application/octet-stream",
        422: "undecodable image, or an invalid query parameter (e.g. a timestamp that is not a finite number)",
        503: "model not loaded, or shutting down",
        504: "no score within result_timeout_seconds; the frame stays queued and is still scored",
    }),
)
async def push_frame(
    stream_id: str,
    request: Request,
    context: Context,
    timestamp: Annotated[
        FiniteFloat | None, Query(description="frame time, seconds since the epoch (default: now); finite")
    ] = None,
) -> FrameResultOut:
    """Score one frame of the stream. The first T-1 frames (and those after a size change) answer
    "warming"; under overload a frame may answer "dropped" with reason "overload" (HTTP 200)."""
    received_at = time.monotonic()
    context.manager.get(stream_id)  # 404 before reading a body we would throw away
    check_content_type(request.headers.get("content-type"))
    limits = context.settings.limits
    data = await read_body_limited(request, limits.max_upload_bytes, limits.upload_timeout_seconds)
    future = await run_in_threadpool(decode_and_submit, context, stream_id, data, timestamp, received_at)
    return FrameResultOut.from_domain(await wait_result(future, context.settings.inference.result_timeout_seconds))


@router.get(
    "/{stream_id}/heatmap",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "error map at the original frame size"},
               404: {"model": ErrorOut, "description": "no such stream, or no such scored frame"}},
)
async def get_heatmap(
    stream_id: str,
    context: Context,
    overlay: Annotated[bool, Query(description="blend the heatmap over the frame")] = False,
    frame_index: Annotated[int | None, Query(ge=0, description="a recent scored frame (default: latest)")] = None,
    scale: Annotated[HeatmapScale, Query(description="threshold: fixed colour scale; frame: per-frame max")] = "threshold",
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="heatmap weight in the overlay")] = 0.5,
) -> Response:
    record = context.manager.heatmap_record(stream_id, frame_index)
    # The colour scale of the stream's own calibration and threshold, as its frame was scored.
    assert record.result.threshold_score is not None  # every scored stream frame carries it
    reference = reference_level(record.errors, scale, record.result.threshold_score)
    png = await run_in_threadpool(render_record, record, reference, overlay, alpha)
    return Response(png, media_type="image/png", headers={"X-Frame-Index": str(record.result.frame_index)})


def render_record(record: HeatmapRecord, reference: float, overlay: bool, alpha: float) -> bytes:
    """The PNG at the original frame size; the kept frame (maybe a smaller JPEG) is decoded only for an overlay."""
    frame = record.frame.decode() if overlay else None
    return render_heatmap(record.errors, (record.result.frame_width, record.result.frame_height), reference,
                          frame, alpha)
