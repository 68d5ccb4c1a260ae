"""Annotated dependencies: the running service and the optional bearer token."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from ..context import ServiceContext
from ..domain import Unauthorized
from ..settings import Settings

_bearer = HTTPBearer(auto_error=False, description="set when the server has VAD_API_TOKEN")


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in the thread pool, a thread hop per dependency per request (measured: a third of
# the event loop's time per pushed frame went to resolving these).


def get_context(connection: HTTPConnection) -> ServiceContext:
    return connection.app.state.service


async def context_dependency(connection: HTTPConnection) -> ServiceContext:
    return get_context(connection)


Context = Annotated[ServiceContext, Depends(context_dependency)]


async def get_settings(context: Context) -> Settings:
    return context.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def token_matches(settings: Settings, presented: str | None) -> bool:
    expected = settings.server.api_token
    if expected is None:
        return True
    return presented is not None and hmac.compare_digest(presented.encode(), expected.get_secret_value().encode())


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if not token_matches(settings, credentials.credentials if credentials else None):
        raise Unauthorized("missing or wrong bearer token: send the header 'Authorization: Bearer TOKEN'")


async def require_token_for_metrics(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if settings.server.metrics_require_token:
        await require_token(settings, credentials)


def websocket_token(connection: HTTPConnection) -> str | None:
    """WebSocket clients may send the token as a header or, for browsers, as ?token=."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return connection.query_params.get("token")


Authorized = Depends(require_token)
