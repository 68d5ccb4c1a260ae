"""WebSocket score feeds: /v1/streams/{id}/scores (one stream) and /v1/scores (all streams).

One JSON message per scored frame, the same object as POST /v1/streams/{id}/frames returns; with
`?batch_ms=N` (1 to 10000) at most one message every N ms, a JSON array of that interval's results
(what a chart needs, at a fraction of the wake-ups). Refusals are plain HTTP answers to the upgrade
request: 401 (token), 404 (unknown stream), 422 (bad batch_ms), 503 (shutting down). The server closes with 1000 when the stream is deleted, 1001 at shutdown and
1008 when the client stopped reading for websocket_stuck_seconds.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse

from ..domain import StreamNotFound
from .deps import Context, token_matches, websocket_token

router = APIRouter(tags=["scores"])


async def _refuse(websocket: WebSocket, status: int, detail: str) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    try:
        await websocket.send_denial_response(JSONResponse({"detail": detail}, status_code=status, headers=headers))
    except RuntimeError:  # a server without the denial-response extension: refuse the upgrade (403)
        await websocket.close(code=1008, reason=detail[:120])


MAX_BATCH_MS = 10000


def batch_seconds(websocket: WebSocket) -> float | None:
    """The `batch_ms` query parameter in seconds (0 when absent); None when it is not 0..MAX_BATCH_MS."""
    raw = websocket.query_params.get("batch_ms", "0")
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_BATCH_MS:
        return None
    return int(raw) / 1000


async def admit(websocket: WebSocket, context: Context, stream_id: str | None, invalid: str | None = None) -> bool:
    """Check the token, then `invalid` (a bad query parameter: 422), shutdown and the stream; accept."""
    if not token_matches(context.settings, websocket_token(websocket)):
        await _refuse(websocket, 401, "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN")
        return False
    if invalid is not None:
        await _refuse(websocket, 422, invalid)
        return False
    if context.stopping:
        await _refuse(websocket, 503, "server shutting down")
        return False
    if stream_id is not None:
        try:
            context.manager.get(stream_id)
        except StreamNotFound as exc:
            await _refuse(websocket, 404, str(exc))
            return False
    await websocket.accept()
    return True


BAD_BATCH = f"query parameter 'batch_ms': an integer from 0 to {MAX_BATCH_MS} (milliseconds) expected"


@router.websocket("/v1/streams/{stream_id}/scores")
async def stream_scores(websocket: WebSocket, stream_id: str, context: Context) -> None:
    batch = batch_seconds(websocket)
    if await admit(websocket, context, stream_id, BAD_BATCH if batch is None else None):
        await context.hub.serve(websocket, stream_id, batch or 0.0)


@router.websocket("/v1/scores")
async def all_scores(websocket: WebSocket, context: Context) -> None:
    batch = batch_seconds(websocket)
    if await admit(websocket, context, None, BAD_BATCH if batch is None else None):
        await context.hub.serve(websocket, None, batch or 0.0)
