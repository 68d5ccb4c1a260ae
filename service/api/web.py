"""The dashboard and the API documentation, served by the service itself (nothing from a CDN).

- `GET /`: the dashboard page (service/web/index.html); its ES modules, styles and vendored
  libraries under `/ui/` (`install` mounts them). The page holds no data: it reads the API with
  the token the user gives it, so neither needs the token (service/api/guard.py lets them through).
- `GET /docs`: Swagger UI from service/web/vendor/swagger-ui (FastAPI's own page loads it from a CDN).
- `GET /v1/models/{name}/evaluation`: what the model's card (the JSON beside its weights file, written
  by `vad evaluate`) measured: AUCs and scoring fps per backend, for the dashboard's models page.
- `GET /v1/streams/{id}/preview.jpg`: the stream's latest scored frame with its heatmap over it and
  the top window's box, as a small JPEG for the dashboard. The page asks for the next one only once
  the previous one has loaded, with its ETag: an unchanged stream answers 304 without rendering.
  Rendering runs on the thread pool, off the scoring path, at the rate the browser can follow; the
  last renderings are kept, so two open tabs cost one rendering per frame. `X-Model-Busy` gives the
  share of recent time the stream's model worker was busy: near 1 the pages slow their live views,
  leaving the CPU to scoring.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..domain import HeatmapNotAvailable
from ..heatmap import heatmap_image, reference_level
from ..history import HeatmapRecord
from .deps import Authorized, Context
from .schemas import ErrorOut

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
UI_PREFIX = "/ui"
DOCS_PATH = "/docs"
# The dashboard loads only from its own origin; images and clips fetched with the token become blob: URLs.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; "
    "script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
# Swagger UI's page starts it with an inline script (FastAPI's get_swagger_ui_html) and its React
# components set inline styles: allowed, but every request still goes to this origin only.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
CARD_MAX_BYTES = 4 * 1024 * 1024
PREVIEW_QUALITY = 80
PREVIEW_CACHE_ENTRIES = 64
PREVIEW_CACHE_BYTES = 16 * 1024 * 1024

pages = APIRouter(include_in_schema=False)
router = APIRouter(prefix="/v1/streams", tags=["frames"], dependencies=[Authorized])
cards = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Authorized])


def install(app: FastAPI) -> None:
    """Add the page, /docs, the preview and model evaluation endpoints and the static files under /ui/ to `app`."""
    app.include_router(pages)
    app.include_router(router)
    app.include_router(cards)
    app.mount(UI_PREFIX, StaticFiles(directory=WEB_DIR), name="ui")


@pages.get("/")
async def dashboard(context: Context) -> HTMLResponse:
    """The page, marked with whether the API wants a token (so it asks before its first request)."""
    auth = "token" if context.settings.server.api_token is not None else "none"
    page = _index_html().replace('<html lang="en">', f'<html lang="en" data-auth="{auth}">', 1)
    return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache",
                                       **SECURITY_HEADERS})


@functools.cache
def _index_html() -> str:
    return (WEB_DIR / "index.html").read_text(encoding="utf-8")


@pages.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")


@pages.get(DOCS_PATH)
async def swagger_ui() -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json", title="DESDnet video anomaly detection: API",
        swagger_js_url=f"{UI_PREFIX}/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{UI_PREFIX}/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{UI_PREFIX}/vendor/swagger-ui/favicon-32x32.png",
        # validatorUrl None: Swagger UI would otherwise fetch a badge from the internet.
        swagger_ui_parameters={"validatorUrl": None, "deepLinking": True},
    )
    page.headers.update({"Content-Security-Policy": DOCS_CSP, **SECURITY_HEADERS})
    return page


# --- the live preview ---------------------------------------------------------------------------


class PreviewCache:
    """The last rendered previews per (stream, frame, options); thread-safe, bounded in entries and
    bytes, least recently used dropped first (`evicted` counts them)."""

    def __init__(self, entries: int = PREVIEW_CACHE_ENTRIES, max_bytes: int = PREVIEW_CACHE_BYTES) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evicted = 0
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, bytes] = OrderedDict()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # would evict everything else: not kept
        with self._lock:
            previous = self._items.pop(key, None)
            self.bytes -= len(previous) if previous is not None else 0
            self._items[key] = data
            self.bytes += len(data)
            while len(self._items) > self.entries or self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= len(dropped)
                self.evicted += 1


_cache = PreviewCache()


def render_preview(record: HeatmapRecord, alpha: float, max_side: int, box: bool) -> bytes:
    """The frame at most `max_side` pixels on its longer side, the heatmap over it with weight
    `alpha` (colour scale of the stream's threshold), the top window's box in white; JPEG."""
    result = record.result
    width, height = result.frame_width, result.frame_height
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    assert result.threshold_score is not None  # every scored stream frame carries it
    reference = reference_level(record.errors, "threshold", result.threshold_score)
    image = heatmap_image(record.errors, size, reference, record.frame.decode(), alpha)
    if box and result.patch is not None:
        x, y, w, h = (round(v * scale) for v in (result.patch.x, result.patch.y, result.patch.w, result.patch.h))
        cv2.rectangle(image, (x, y), (x + max(w, 1) - 1, y + max(h, 1) - 1), (255, 255, 255), max(1, size[0] // 240))
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, PREVIEW_QUALITY])
    if not ok:  # pragma: no cover - imencode of a uint8 BGR image does not fail
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


@router.get(
    "/{stream_id}/preview.jpg",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "the latest scored frame with its heatmap and box",
              "headers": {"X-Frame-Index": {"description": "the frame shown", "schema": {"type": "integer"}},
                          "X-Model-Busy": {"description": "share (0 to 1) of recent time the stream's model "
                                           "worker was busy; the dashboard slows its live views above 0.85",
                                           "schema": {"type": "number"}}}},
        204: {"description": "no scored frame to show yet (or none kept any more); X-Reason says why"},
        304: {"description": "If-None-Match names the latest picture (its ETag): nothing newer to show"},
        404: {"model": ErrorOut, "description": "no such stream"},
    },
)
async def preview(
    stream_id: str,
    request: Request,
    context: Context,
    alpha: Annotated[float, Query(ge=0.0, le=1.0, description="heatmap weight over the frame")] = 0.5,
    max_side: Annotated[int, Query(ge=32, le=4096, description="longer side of the image at most")] = 640,
    box: Annotated[bool, Query(description="draw the top-scoring window")] = True,
) -> Response:
    """For the dashboard: the latest scored frame, downscaled, with the heatmap over it (`alpha`) and the
    top window's box, as JPEG. A stream without a scored frame answers 204 (not an error: it is warming);
    `If-None-Match` with the ETag of the picture shown answers 304 until the stream scores a newer frame."""
    try:
        record = context.manager.heatmap_record(stream_id)
    except HeatmapNotAvailable as exc:
        return Response(status_code=204, headers={"X-Reason": str(exc).encode("ascii", "replace").decode()})
    # The same picture for every max_side at or above the frame's size (tabs asking different sizes share it).
    side = min(max_side, max(record.result.frame_width, record.result.frame_height))
    index = record.result.frame_index
    etag = f'"{index}-{alpha:.3f}-{side}-{int(box)}"'
    busy = context.manager.model_busy(stream_id)
    headers = {"X-Frame-Index": str(index), "ETag": etag, "Cache-Control": "no-cache", "X-Model-Busy": f"{busy:.2f}"}
    if request.headers.get("if-none-match") == etag:  # the page shows this picture already: no rendering
        return Response(status_code=304, headers=headers)
    key = (stream_id, index, round(alpha, 3), side, box)
    data = _cache.get(key)
    if data is None:
        data = await run_in_threadpool(render_preview, record, alpha, side, box)
        _cache.put(key, data)
    return Response(data, media_type="image/jpeg", headers=headers)


# --- what a model's card measured -----------------------------------------------------------------


class EvaluationOut(BaseModel):
    backend: str | None = None
    precision: str | None = None
    frames_scored: int | None = None
    paper_micro_auc: float | None = Field(None, description="frame-level micro AUC, the published protocol")
    causal_micro_auc: float | None = Field(None, description="frame-level micro AUC, the causal (live) protocol")
    causal_eer: float | None = None
    scoring_fps: float | None = Field(None, description="frames per second `vad evaluate` scored at")


class ModelEvaluationOut(BaseModel):
    name: str
    card: str | None = Field(None, description="the card's file name, when the weights file has one beside it")
    evaluations: list[EvaluationOut] = Field(default_factory=list)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value) else None


def read_card(name: str, weights_path: Path) -> ModelEvaluationOut:
    """The `evaluation` section of the JSON card beside the weights (NAME.json); empty without one."""
    card = weights_path.with_suffix(".json")
    try:
        if not card.is_file() or card.stat().st_size > CARD_MAX_BYTES:
            return ModelEvaluationOut(name=name)
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ModelEvaluationOut(name=name)
    found = []
    evaluation = data.get("evaluation") if isinstance(data, dict) else None
    for run in (evaluation.values() if isinstance(evaluation, dict) else []):
        if not isinstance(run, dict):
            continue
        paper, causal = run.get("paper") or {}, run.get("causal") or {}
        frames = run.get("frames_scored")
        found.append(EvaluationOut(
            backend=str(run["backend"]) if "backend" in run else None,
            precision=str(run["precision"]) if "precision" in run else None,
            frames_scored=frames if isinstance(frames, int) else None,
            paper_micro_auc=_number(paper.get("micro_auc")) if isinstance(paper, dict) else None,
            causal_micro_auc=_number(causal.get("micro_auc")) if isinstance(causal, dict) else None,
            causal_eer=_number(causal.get("eer")) if isinstance(causal, dict) else None,
            scoring_fps=_number(run.get("scoring_fps")),
        ))
    return ModelEvaluationOut(name=name, card=card.name, evaluations=found)


@cards.get("/{name}/evaluation", response_model=ModelEvaluationOut,
           responses={404: {"model": ErrorOut, "description": "no such model"}})
async def model_evaluation(name: str, context: Context) -> ModelEvaluationOut | JSONResponse:
    """What the model's card (NAME.json beside its weights, written by `vad evaluate`) measured: AUCs on
    its test data and scoring fps, per backend and precision. Empty where the model has no card."""
    for info in context.models.infos():
        if info.name == name:
            return await run_in_threadpool(read_card, name, Path(info.path))
    known = ", ".join(sorted(i.name for i in context.models.infos()))
    return JSONResponse({"detail": f"no model {name!r}; the models are: {known}"}, status_code=404)
