"""`create_app(settings)`: the FastAPI app factory. The lifespan owns the model, the stream manager
and the worker thread, and stops them; nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI

from .api import deps, errors, events, frames, health, ingest, metrics, models, score, streams, web, ws
from .api.guard import RequestGuard
from .api.schemas import FrameResultOut
from .context import ServiceContext
from .domain import FrameResult
from .notify.payload import payload_json
from .settings import Settings
from .streams import SourceFactory


def _serialize(result: FrameResult) -> str:
    return FrameResultOut.from_domain(result).model_dump_json()


def default_source_factory(settings: Settings) -> SourceFactory:
    """Live RTSP/HTTP cameras with the `sources` settings; imported lazily so PyAV loads only when
    the app is built."""
    from .sources import factory_for

    return factory_for(settings.sources)


def create_app(settings: Settings, source_factory: SourceFactory | None | Literal["auto"] = "auto") -> FastAPI:
    """source_factory: builds live sources for POST /v1/streams with a non-"push" source; "auto" uses
    `service.sources.source_factory` with `settings.sources`, None refuses live sources (422)."""
    factory = default_source_factory(settings) if source_factory == "auto" else source_factory

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = ServiceContext(settings, _serialize, factory, serialize_event=payload_json)
        await context.start()
        app.state.service = context
        try:
            yield
        finally:
            await context.stop()

    app = FastAPI(
        title="DESDnet video anomaly detection",
        version="0.1.0",
        description=(
            "Push frames or clips, get anomaly scores, heatmaps and live score feeds. Every error answers "
            '`{"detail": "<message>"}`. The WebSocket endpoints (/v1/scores, /v1/streams/{id}/scores, '
            "/v1/streams/{id}/ingest) are described in the project's API documentation."
        ),
        lifespan=lifespan,
        docs_url=None,  # /docs is served by service/api/web.py, from local files (FastAPI's loads a CDN)
        redoc_url=None,  # ReDoc would load from a CDN: /docs is the one API page
    )
    errors.install(app)
    app.add_middleware(RequestGuard, settings=settings)  # token and body size, before any body is read
    for module in (streams, frames, ingest, score, models, ws, health, metrics):
        app.include_router(module.router)
    app.include_router(events.authorized)
    app.include_router(events.router)
    web.install(app)  # the dashboard at /, its files under /ui/, /docs, and the preview endpoint
    install_openapi(app, settings)
    return app


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """`app.openapi()`: FastAPI's document, made to say what this server does under its settings:
    the bearer scheme and 401 on the operations that need the token, ErrorOut for every 422, the
    weights' T in /v1/score's body, and path parameters as one path segment each (what the router
    matches). Cached once the service has started (T is known from then on)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        app.openapi_schema = None  # FastAPI caches what it generated: cache the final document instead
        errors.declare_validation_errors(schema)
        deps.declare_security(schema, settings)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    if parameter.get("in") == "path" and parameter.get("schema", {}).get("type") == "string":
                        parameter["schema"].setdefault("pattern", "^[^/]+$")
        context: ServiceContext | None = getattr(app.state, "service", None)
        runtime = context.runtime if context is not None else None
        score_operation = schema.get("paths", {}).get("/v1/score", {}).get("post")
        if score_operation is not None:
            score_operation.update(score.form_body(runtime.config.frames if runtime is not None else None))
        if context is not None:
            app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of `vad serve` (tests start their servers with it too)."""
    options: dict[str, Any] = dict(
        host=settings.server.host, port=settings.server.port, log_level=settings.server.log_level,
        timeout_graceful_shutdown=10,
        # Score messages are a few hundred bytes of JSON: compressing each costs more CPU than
        # it saves on the wire, on the cores the model needs.
        ws_per_message_deflate=False,
        ws_ping_interval=settings.publish.websocket_ping_interval_seconds,
        ws_ping_timeout=settings.publish.websocket_ping_timeout_seconds,
        ws_max_size=settings.publish.websocket_max_message_bytes,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


class ServiceServer(uvicorn.Server):
    """uvicorn.Server for `create_app`: on shutdown, first closes the WebSocket subscribers with 1001
    (going away) and refuses new work; uvicorn itself would drop them with 1012 (service restart)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list | None = None) -> None:
        context: ServiceContext | None = getattr(self.app.state, "service", None)
        if context is not None:
            await context.begin_shutdown()
        await super().shutdown(sockets)
