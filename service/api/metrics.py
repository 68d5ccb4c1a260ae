"""/metrics: Prometheus text exposition of this app's registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from ..metrics import CONTENT_TYPE_LATEST
from .deps import Context, require_token_for_metrics

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require_token_for_metrics)],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(context: Context) -> Response:
    return Response(context.metrics.render(), media_type=CONTENT_TYPE_LATEST)
