"""/healthz (the process answers) and /readyz (weights loaded and the inference worker alive)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Response, status

from .deps import Authorized, Context
from .schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """Liveness: no token needed, no dependency checked."""
    return HealthOut()


@router.get(
    "/readyz",
    response_model=ReadyOut,
    dependencies=[Authorized],
    responses={503: {"model": ReadyOut, "description": "not ready, with the reason"}},
)
async def readyz(context: Context, response: Response) -> ReadyOut:
    reason = context.not_ready_reason()
    rt = context.runtime
    if reason is not None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadyOut(
        status="ready" if reason is None else "not ready",
        reason=reason,
        weights=str(context.settings.model.weights),
        device=rt.device if rt else None,
        backend=rt.backend_name if rt else None,
        precision=rt.precision if rt else None,
        threshold=rt.threshold if rt else None,
        calibration=rt.calibration_source if rt else None,
        config=json.loads(rt.config.to_json()) if rt else None,
        model_errors=context.models.errors(),
        event_store=context.event_store_status(),
    )
