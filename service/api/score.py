"""/v1/score: stateless scoring of one clip of T images sent as a multipart form, oldest first."""

from __future__ import annotations

import base64
import time
from concurrent.futures import Future
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request as StarletteRequest

from ..context import ServiceContext
from ..decode import decode_image
from ..domain import InvalidRequest, NotReady, PayloadTooLarge, UnsupportedMediaType
from ..heatmap import HeatmapScale, reference_level, render_heatmap
from ..streams import ClipOutcome
from .deps import Authorized, Context
from .errors import error_responses
from .schemas import FrameResultOut, ScoreResultOut
from .uploads import read_body_limited, wait_result

router = APIRouter(prefix="/v1", tags=["score"], dependencies=[Authorized])

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the images


def form_body(frames: int | None) -> dict[str, Any]:
    """The OpenAPI request body: exactly T image files, T the clip length of the loaded weights.
    FastAPI does not parse the form (the endpoint reads it under a byte cap), so it is declared here;
    the app's openapi() fills in T once the model is loaded (`None`: not known yet)."""
    count = f"exactly {frames}" if frames else "exactly T (the weights' clip length: /readyz config.frames)"
    files: dict[str, Any] = {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": f"{count} JPEG or PNG files of one size, oldest first",
    }
    if frames:
        files |= {"minItems": frames, "maxItems": frames}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"frames": files}, "required": ["frames"]},
                    "encoding": {"frames": {"contentType": "image/jpeg, image/png"}},
                }
            },
            "description": f"{count} image files, oldest first, as the field 'frames' repeated (any field names work)",
        }
    }


FORM_BODY = form_body(None)


async def _form_files(request: Request, limit: int, timeout_s: float, max_files: int) -> list[bytes]:
    media = request.headers.get("content-type", "")
    if not media.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"Content-Type {media.split(';')[0] or 'none'!r} is not supported; send multipart/form-data"
        )
    body = await read_body_limited(request, limit, timeout_s)

    async def replay() -> dict[str, object]:  # the form parser reads the body we already capped
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, replay).form(max_files=max_files, max_fields=max_files)
    except Exception as exc:  # python-multipart's errors for a broken body
        raise InvalidRequest(f"malformed multipart form: {getattr(exc, 'detail', exc)}") from exc
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        return [await f.read() for f in files]
    finally:
        await form.close()


def _decode_and_score(
    context: ServiceContext, images: list[bytes], received_at: float, decoded: list[np.ndarray]
) -> Future[ClipOutcome]:
    decoded.extend(decode_image(data, context.settings.limits.max_pixels) for data in images)
    return context.manager.score_clip(decoded, received_at=received_at)


@router.post(
    "/score",
    response_model=ScoreResultOut,
    openapi_extra=FORM_BODY,
    responses=error_responses({
        408: "the body did not arrive within upload_timeout_seconds",
        413: "the body above T x max_upload_bytes, or an image above max_upload_bytes or max_pixels",
        415: "not multipart/form-data",
        422: "not exactly T decodable images of one size, a malformed form, or an invalid query parameter",
        503: "model not loaded, shutting down, or max_pending_stateless requests already waiting",
        504: "no score within result_timeout_seconds",
    }),
)
async def score_clip(
    request: Request,
    context: Context,
    heatmap: Annotated[bool, Query(description="add the heatmap PNG (base64) of the last image")] = False,
    overlay: Annotated[bool, Query(description="blend that heatmap over the last image")] = False,
    scale: Annotated[HeatmapScale, Query()] = "threshold",
) -> ScoreResultOut:
    """Score the last of T images (oldest first) with no stream state: smoothed_score equals
    normalized_score (there is no history to average)."""
    received_at = time.monotonic()
    s = context.settings.limits
    if context.runtime is None or context.scorer is None:
        raise NotReady(f"not ready to score frames: {context.not_ready_reason()}")
    frames = context.runtime.config.frames
    images = await _form_files(
        request, frames * s.max_upload_bytes + MULTIPART_OVERHEAD, s.upload_timeout_seconds, frames + 1
    )
    if len(images) != frames:
        raise InvalidRequest(f"send exactly {frames} image files (oldest first), got {len(images)}")
    for i, data in enumerate(images):
        if len(data) > s.max_upload_bytes:
            raise PayloadTooLarge(f"image {i} is {len(data)} bytes, above the limit of {s.max_upload_bytes} bytes")
    clip_frames: list[np.ndarray] = []
    future = await run_in_threadpool(_decode_and_score, context, images, received_at, clip_frames)
    outcome = await wait_result(future, context.settings.inference.result_timeout_seconds)
    result = outcome.result
    if outcome.errors is None:
        raise NotReady(f"the clip was not scored: {result.reason}")
    out = ScoreResultOut(**FrameResultOut.from_domain(result).model_dump())
    if heatmap:
        reference = reference_level(outcome.errors, scale, context.scorer.threshold_score())
        png = await run_in_threadpool(
            render_heatmap, outcome.errors, (result.frame_width, result.frame_height), reference,
            clip_frames[-1] if overlay else None,
        )
        out.heatmap_png_base64 = base64.b64encode(png).decode()
    return out
