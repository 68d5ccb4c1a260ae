"""Domain errors -> HTTP responses, in this one place. Every body is {"detail": "<message>"}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import domain as d
from .deps import get_context

log = logging.getLogger("vad.api")

STATUS: dict[type[d.ServiceError], int] = {
    d.Unauthorized: 401,
    d.StreamNotFound: 404,
    d.HeatmapNotAvailable: 404,
    d.UploadTimeout: 408,
    d.StreamClosed: 409,
    d.PayloadTooLarge: 413,
    d.ImageTooLarge: 413,
    d.UnsupportedMediaType: 415,
    d.UnsupportedSource: 422,
    d.InvalidImage: 422,
    d.InvalidRequest: 422,
    d.StreamLimitReached: 429,
    d.NotReady: 503,
    d.Overloaded: 503,
    d.ResultTimeout: 504,
}

# Bad uploads, counted in vad_frames_rejected_total{reason}.
REJECTED: dict[type[d.ServiceError], str] = {
    d.PayloadTooLarge: "too_large",
    d.ImageTooLarge: "too_many_pixels",
    d.UnsupportedMediaType: "unsupported_media_type",
    d.InvalidImage: "invalid_image",
    d.InvalidRequest: "invalid_request",
    d.UploadTimeout: "upload_timeout",
}


def status_for(exc: d.ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, d.ServiceError)
    status = status_for(exc)
    reason = REJECTED.get(type(exc))
    if reason is not None:
        get_context(request).metrics.frames_rejected.labels(reason).inc()
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, d.Overloaded | d.NotReady):
        headers["Retry-After"] = "1"
    if isinstance(exc, d.PayloadTooLarge | d.UploadTimeout):
        headers["Connection"] = "close"  # the rest of the body was not read
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(d.ServiceError, service_error)
    app.add_exception_handler(Exception, unexpected_error)
