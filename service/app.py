"""`create_app(settings)`: the FastAPI app factory. The lifespan owns the model, the stream manager
and the worker thread, and stops them; nothing is built at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import uvicorn
from fastapi import FastAPI

from .api import errors, frames, health, ingest, metrics, score, streams, ws
from .api.schemas import FrameResultOut
from .context import ServiceContext
from .domain import FrameResult
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
        context = ServiceContext(settings, _serialize, factory)
        await context.start()
        app.state.service = context
        try:
            yield
        finally:
            await context.stop()

    app = FastAPI(
        title="DESDnet video anomaly detection",
        version="0.1.0",
        description="Push frames or clips, get anomaly scores, heatmaps and live score feeds.",
        lifespan=lifespan,
    )
    errors.install(app)
    for module in (streams, frames, ingest, score, ws, health, metrics):
        app.include_router(module.router)
    return app


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
