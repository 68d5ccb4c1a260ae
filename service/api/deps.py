"""Annotated dependencies: the running service and the optional bearer token."""

from __future__ import annotations

import copy
import hmac
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from ..context import ServiceContext
from ..domain import Unauthorized
from ..settings import Settings

BEARER_SCHEME = "HTTPBearer"  # the scheme's name in the OpenAPI document's components.securitySchemes
_bearer = HTTPBearer(
    auto_error=False, scheme_name=BEARER_SCHEME, description="the server's VAD_API_TOKEN, as 'Authorization: Bearer TOKEN'"
)
# /metrics reads the same header through a scheme of its own name, only so that the OpenAPI document
# tells it apart: declare_security turns it into BEARER_SCHEME with metrics_require_token, else drops it.
METRICS_SCHEME = "MetricsBearer"
_metrics_bearer = HTTPBearer(auto_error=False, scheme_name=METRICS_SCHEME)


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
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_metrics_bearer)],
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


# --- OpenAPI: which operations need the token, under this server's settings -----------------------


UNAUTHORIZED_RESPONSE: dict[str, Any] = {
    "description": "missing or wrong bearer token",
    "headers": {"WWW-Authenticate": {"description": "`Bearer`", "required": True, "schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
}


def declare_security(openapi: dict[str, Any], settings: Settings) -> None:
    """Make a generated OpenAPI document follow the settings. FastAPI marks every operation that reads
    the header, token or not: keep the bearer scheme, and declare 401, on exactly the operations this
    server answers 401 without a good token (those with `Authorized`; /metrics only with
    metrics_require_token; none without api_token); the scheme itself only if one uses it."""
    token = settings.server.api_token is not None
    used = False
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            schemes = {name for requirement in operation.get("security", []) for name in requirement}
            if token and (BEARER_SCHEME in schemes or (METRICS_SCHEME in schemes and settings.server.metrics_require_token)):
                used = True
                operation["security"] = [{BEARER_SCHEME: []}]
                operation.setdefault("responses", {})["401"] = copy.deepcopy(UNAUTHORIZED_RESPONSE)
            else:
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)
    components = openapi.get("components", {})
    schemes = components.get("securitySchemes", {})
    schemes.pop(METRICS_SCHEME, None)
    if not used:
        schemes.pop(BEARER_SCHEME, None)
    if "securitySchemes" in components and not schemes:
        del components["securitySchemes"]
