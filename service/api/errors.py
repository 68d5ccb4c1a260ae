"""Domain errors -> HTTP responses, in this one place. Every body is {"detail": "<message>"}, request
validation errors included; and how the OpenAPI document declares those answers."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import domain as d
from ..store.errors import StoreError
from .deps import get_context
from .schemas import ErrorOut

log = logging.getLogger("vad.api")

STATUS: dict[type[d.ServiceError], int] = {
    d.Unauthorized: 401,
    d.StreamNotFound: 404,
    d.HeatmapNotAvailable: 404,
    d.MediaNotAvailable: 404,
    d.UploadTimeout: 408,
    d.StreamClosed: 409,
    d.PayloadTooLarge: 413,
    d.ImageTooLarge: 413,
    d.UnsupportedMediaType: 415,
    d.UnsupportedSource: 422,
    d.InvalidImage: 422,
    d.InvalidRequest: 422,
    d.InvalidRegion: 422,
    d.UnknownModel: 422,
    d.ModelUnavailable: 422,
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


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client closed the connection while its body was being read: not a server error. Nobody is
    left to read an answer; one line in the log and a counter."""
    log.info("client went away during %s %s", request.method, request.url.path)
    get_context(request).metrics.client_disconnects.inc()
    return Response(status_code=400, headers={"Connection": "close"})


# --- request validation -------------------------------------------------------------------------

_WHERE = {"query": "query parameter", "path": "path parameter", "header": "header", "cookie": "cookie"}
MAX_REPORTED_ERRORS = 5


def describe_validation_error(error: Mapping[str, Any]) -> str:
    """One of FastAPI's validation errors as a sentence naming what was wrong, e.g.
    "query parameter 'timestamp': Input should be a finite number". The input is never echoed (it
    may be huge, or NaN, which JSON cannot carry)."""
    loc = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg") or "invalid value").removeprefix("Value error, ")
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error")
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"body: {message}{f': {reason}' if reason else ''}{at}"
    if not loc:
        return message
    kind, rest = loc[0], loc[1:]
    if kind == "body":
        where = f"body field '{'.'.join(rest)}'" if rest else "body"
    elif kind in _WHERE and rest:
        where = f"{_WHERE[kind]} '{'.'.join(rest)}'"
    else:
        where = ".".join(loc)
    return f"{where}: {message}"


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """RequestValidationError -> 422 {"detail": "<message>"}, the shape of every other error."""
    assert isinstance(exc, RequestValidationError)
    messages = list(dict.fromkeys(describe_validation_error(e) for e in exc.errors()))
    more = len(messages) - MAX_REPORTED_ERRORS
    detail = "; ".join(messages[:MAX_REPORTED_ERRORS]) + (f"; and {more} more" if more > 0 else "")
    return JSONResponse({"detail": detail or "invalid request"}, status_code=422)


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI answers a JSON body it cannot decode (not UTF-8) with 400 "There was an error parsing
    the body"; the API answers every unreadable body with 422. Other HTTP errors keep FastAPI's answer."""
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if isinstance(cause, ClientDisconnect):  # FastAPI wraps a client gone mid-body into a 400
        return await client_gone(request, cause)
    if exc.status_code == 400 and isinstance(cause, RecursionError):
        return JSONResponse({"detail": "body: the JSON nests too deeply"}, status_code=422)
    if exc.status_code == 400 and isinstance(cause, ValueError):
        if isinstance(cause, UnicodeDecodeError):
            detail = f"body: not valid UTF-8 JSON ({cause.reason} at byte {cause.start})"
        else:
            detail = f"body: cannot parse the JSON body ({cause})"
        return JSONResponse({"detail": detail}, status_code=422)
    return await http_exception_handler(request, exc)


# --- OpenAPI -------------------------------------------------------------------------------------

# 401 and its WWW-Authenticate header: deps.declare_security, on the operations that need the token.
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    503: {"Retry-After": {"description": "seconds to wait before retrying", "required": True,
                          "schema": {"type": "integer", "minimum": 0}}},
}


def error_responses(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for its error statuses: the ErrorOut body, and the headers that
    `service_error` sends with that status."""
    return {
        status: {"model": ErrorOut, "description": text, **({"headers": ERROR_HEADERS[status]} if status in ERROR_HEADERS else {})}
        for status, text in descriptions.items()
    }


VALIDATION_DESCRIPTION = "invalid query parameter, path parameter or body"
_ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def declare_validation_errors(openapi: dict[str, Any]) -> None:
    """In a generated OpenAPI document, declare ErrorOut for the 422 answers that FastAPI declares
    with its HTTPValidationError list, and drop that schema: `validation_error` answers ErrorOut."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is None:
                continue
            content = response.setdefault("content", {}).setdefault("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                content["schema"] = dict(_ERROR_REF)
                response["description"] = VALIDATION_DESCRIPTION
            elif VALIDATION_DESCRIPTION not in response.get("description", ""):
                response["description"] = f"{response.get('description', '')}; {VALIDATION_DESCRIPTION}".strip("; ")
    schemas = openapi.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    assert "HTTPValidationError" not in json.dumps(openapi), "a reference to HTTPValidationError is left"


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)


# The event store's errors (service/store/errors.py), by class name: the store imports nothing of the API.
STORE_STATUS = {"EventNotFound": 404, "InvalidQuery": 422, "StoreUnavailable": 503, "StoreClosed": 503}


async def store_error(request: Request, exc: Exception) -> JSONResponse:
    status = next((STORE_STATUS[c.__name__] for c in type(exc).__mro__ if c.__name__ in STORE_STATUS), 500)
    if status == 500:
        return await unexpected_error(request, exc)
    headers = {"Retry-After": "5"} if status == 503 else {}
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(d.ServiceError, service_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected_error)
