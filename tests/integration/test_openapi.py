"""The OpenAPI document says what the service does, and client numbers are finite.

- Floats from clients (query parameters, JSON bodies) that are NaN or infinite (also 1e400, which
  parses as infinity) are refused with 422 instead of coming back as `"timestamp": null`.
- Every error body, validation errors included, is {"detail": "<one message>"}; the document
  declares ErrorOut for 422, never FastAPI's HTTPValidationError list.
- A JSON body that is not UTF-8, or not JSON, is 422.
- The bearer scheme and 401 are declared on exactly the operations that answer 401, as configured.
- Upload bodies are declared (the push endpoint's image, /v1/score's exactly-T multipart form), and
  so is every status code an operation returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from service.api import errors
from service.app import create_app
from service.settings import Settings
from tests.support.serving import RunningServer, encode

JPEG = {"content-type": "image/jpeg"}
NON_FINITE = ("nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e400", "-1e400")
ERROR_REF = "#/components/schemas/ErrorOut"
OPEN_OPERATIONS = {("get", "/healthz"), ("get", "/metrics")}  # /metrics: unless metrics_require_token


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def document(service_settings: Callable[..., Settings], **overrides: Any) -> dict[str, Any]:
    """The document of an app with these settings (built, not started: the security part needs no model)."""
    return create_app(service_settings(**overrides), source_factory=None).openapi()


def concrete(path: str) -> str:
    return path.replace("{stream_id}", "nope")


def accepts_number(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "number" or any(accepts_number(s) for s in schema.get("anyOf", []))


@pytest.fixture
def stream_id(vad_server: RunningServer) -> str:
    return httpx.post(vad_server.url("/v1/streams"), json={}).json()["id"]


@pytest.fixture(scope="module")
def spec(vad_server: RunningServer) -> dict[str, Any]:
    return httpx.get(vad_server.url("/openapi.json")).json()


# --- A: non-finite numbers ---------------------------------------------------------------------


@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_frame_timestamp_is_422(vad_server: RunningServer, stream_id: str, video, value: str) -> None:
    url = vad_server.url(f"/v1/streams/{stream_id}/frames")
    r = httpx.post(url, params={"timestamp": value}, content=encode(video[0]), headers=JPEG)
    assert r.status_code == 422, r.text
    assert r.json() == {"detail": "query parameter 'timestamp': Input should be a finite number"}
    assert httpx.get(vad_server.url(f"/v1/streams/{stream_id}")).json()["frames_received"] == 0
    ok = httpx.post(url, params={"timestamp": "1767225600.5"}, content=encode(video[0]), headers=JPEG)
    assert ok.status_code == 200 and ok.json()["timestamp"] == 1767225600.5


@pytest.mark.parametrize(
    "body",
    [
        b'{"max_fps": NaN}', b'{"max_fps": Infinity}', b'{"max_fps": -Infinity}', b'{"max_fps": 1e400}',
        b'{"options": {"max_fps": NaN}}', b'{"options": {"x": [1, {"y": Infinity}]}}',
    ],
)
def test_non_finite_numbers_in_json_bodies_are_422(vad_server: RunningServer, body: bytes) -> None:
    r = httpx.post(vad_server.url("/v1/streams"), content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "finite" in detail and "body field" in detail


def test_every_float_query_parameter_refuses_non_finite_values(vad_server: RunningServer, spec) -> None:
    """Whatever float query parameters there are (now: timestamp, alpha), NaN and infinity are 422."""
    checked = []
    for method, path, operation in operations(spec):
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "query" or not accepts_number(parameter["schema"]):
                continue
            for value in ("nan", "inf", "1e400"):
                r = httpx.request(method, vad_server.url(concrete(path)), params={parameter["name"]: value})
                assert r.status_code == 422, (method, path, parameter["name"], value, r.text)
                assert r.json()["detail"].startswith(f"query parameter '{parameter['name']}': ")
            checked.append(parameter["name"])
    assert {"timestamp", "alpha"} <= set(checked)


# --- B: one error shape --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "detail"),
    [
        ("get", "/v1/streams/nope/heatmap", {"params": {"alpha": "2"}},
         "query parameter 'alpha': Input should be less than or equal to 1"),
        ("get", "/v1/streams/nope/heatmap", {"params": {"frame_index": "x"}},
         "query parameter 'frame_index': Input should be a valid integer, unable to parse string as an integer"),
        ("post", "/v1/streams", {"json": {"source": "push", "colour": 1}},
         "body field 'colour': Extra inputs are not permitted"),
        ("post", "/v1/streams", {"json": {"name": ""}},
         "body field 'name': String should have at least 1 character"),
        ("post", "/v1/streams", {"json": [1, 2]},
         "body: Input should be a valid dictionary or object to extract fields from"),
        ("post", "/v1/streams", {"content": b'{"source": "push",', "headers": {"content-type": "application/json"}},
         "body: JSON decode error: Expecting property name enclosed in double quotes at character 18"),
    ],
)
def test_validation_errors_are_one_readable_message(vad_server: RunningServer, method, path, kwargs, detail) -> None:
    r = httpx.request(method, vad_server.url(path), **kwargs)
    assert r.status_code == 422
    assert r.json() == {"detail": detail}


def test_422_is_declared_as_error_out(spec) -> None:
    assert not {"HTTPValidationError", "ValidationError"} & set(spec["components"]["schemas"])
    assert spec["components"]["schemas"]["ErrorOut"]["required"] == ["detail"]
    for method, path, operation in operations(spec):
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in operation["responses"], (method, path)
        if "422" in operation["responses"]:
            schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, (method, path)


@pytest.mark.parametrize(
    ("body", "content_type", "needle"),
    [
        (b'{"name": "caf\xe9"}', "application/json", "not valid UTF-8 JSON"),  # Latin-1: FastAPI said 400
        (b'{"name": "\xc3\x28"}', "application/json", "not valid UTF-8 JSON"),  # a broken UTF-8 sequence
        ('{"source": "push"}'.encode("utf-16"), "application/json", "not valid UTF-8 JSON"),  # was 201
        (b"not json", "application/json", "JSON decode error"),
        (b"not json", "text/plain", "valid dictionary"),
    ],
)
def test_json_bodies_that_are_not_utf8_json_are_422(vad_server: RunningServer, body, content_type, needle) -> None:
    r = httpx.post(vad_server.url("/v1/streams"), content=body, headers={"content-type": content_type})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], str) and needle in r.json()["detail"]


# --- B: security, as configured ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "protected_metrics"),
    [({}, None), ({"metrics_require_token": True}, None),
     ({"api_token": "t"}, False), ({"api_token": "t", "metrics_require_token": True}, True)],
)
def test_security_and_401_follow_the_settings(service_settings, overrides, protected_metrics) -> None:
    spec = document(service_settings, **overrides)
    token = "api_token" in overrides
    assert ("HTTPBearer" in spec.get("components", {}).get("securitySchemes", {})) == token
    for method, path, operation in operations(spec):
        protected = token and ((method, path) not in OPEN_OPERATIONS or (path == "/metrics" and protected_metrics))
        assert ("security" in operation) == protected, (method, path)
        assert ("401" in operation["responses"]) == protected, (method, path)
        if protected:
            assert operation["security"] == [{"HTTPBearer": []}]
            unauthorized = operation["responses"]["401"]
            assert unauthorized["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
            assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True


def test_declared_401s_are_what_the_server_answers(start_server) -> None:
    server = start_server(api_token="t", metrics_require_token=False)
    spec = httpx.get(server.url("/openapi.json")).json()
    for method, path, operation in operations(spec):
        r = httpx.request(method, server.url(concrete(path)))
        assert (r.status_code == 401) == ("401" in operation["responses"]), (method, path, r.status_code)
        if r.status_code == 401:
            assert r.headers["www-authenticate"] == "Bearer" and isinstance(r.json()["detail"], str)


# --- B: request bodies and response codes -------------------------------------------------------


def test_upload_bodies_are_declared(vad_server: RunningServer, spec, stream_id: str, video) -> None:
    frames = httpx.get(vad_server.url("/readyz")).json()["config"]["frames"]
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]
    assert body["required"] is True and f"exactly {frames} " in body["description"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["frames"]
    files = schema["properties"]["frames"]
    assert files["minItems"] == files["maxItems"] == frames
    assert files["items"] == {"type": "string", "format": "binary"}

    push = spec["paths"]["/v1/streams/{stream_id}/frames"]["post"]["requestBody"]
    assert push["required"] is True
    assert set(push["content"]) == {"image/jpeg", "image/png", "application/octet-stream"}
    assert all(c["schema"] == {"type": "string", "format": "binary"} for c in push["content"].values())
    # Declared only: the endpoint still reads the raw body itself, whatever the declared type.
    r = httpx.post(vad_server.url(f"/v1/streams/{stream_id}/frames"), content=encode(video[0]),
                   headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["status"] == "warming"


RETURNED = {
    ("post", "/v1/streams"): {201, 413, 422, 429, 503},
    ("patch", "/v1/streams/{stream_id}"): {200, 404, 409, 413, 422},
    ("get", "/v1/streams/{stream_id}/calibration"): {200, 404},
    ("post", "/v1/streams/{stream_id}/calibration"): {200, 404},
    ("delete", "/v1/streams/{stream_id}/calibration"): {200, 404},
    ("get", "/v1/models"): {200},
    ("get", "/v1/events"): {200, 422, 503},
    ("get", "/v1/streams/{stream_id}/events"): {200, 422, 503},
    ("get", "/v1/streams/{stream_id}/threshold"): {200, 404, 422, 503},
    ("get", "/v1/events/{event_id}"): {200, 404, 503},
    ("patch", "/v1/events/{event_id}"): {200, 404, 413, 422, 503},
    ("delete", "/v1/events/{event_id}"): {200, 404, 503},
    ("get", "/v1/events/{event_id}/snapshot.jpg"): {200, 404, 422, 503},
    ("get", "/v1/events/{event_id}/clip.mp4"): {200, 206, 404, 503},
    ("get", "/v1/streams/{stream_id}/preview.jpg"): {200, 204, 404},
    ("get", "/v1/models/{name}/evaluation"): {200, 404},
    ("post", "/v1/models/reload"): {200},
    ("get", "/v1/streams"): {200},
    ("get", "/v1/streams/{stream_id}"): {200, 404},
    ("delete", "/v1/streams/{stream_id}"): {200, 404},
    ("post", "/v1/streams/{stream_id}/frames"): {200, 404, 408, 409, 413, 415, 422, 503, 504},
    ("get", "/v1/streams/{stream_id}/heatmap"): {200, 404, 422},
    ("post", "/v1/score"): {200, 408, 413, 415, 422, 503, 504},
    ("get", "/healthz"): {200},
    ("get", "/readyz"): {200, 503},
    ("get", "/metrics"): {200},
}


def test_every_returned_status_is_declared(service_settings) -> None:
    spec = document(service_settings, api_token="t", metrics_require_token=True)
    declared_anywhere: set[int] = set()
    for method, path, operation in operations(spec):
        declared = {int(code) for code in operation["responses"]}
        assert RETURNED[(method, path)] <= declared, (method, path, RETURNED[(method, path)] - declared)
        declared_anywhere |= declared
        for code, response in operation["responses"].items():
            if int(code) >= 400 and (method, path) != ("get", "/readyz"):  # readyz's 503 is a ReadyOut
                assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (method, path, code)
            if code == "503" and (method, path) != ("get", "/readyz"):
                assert response["headers"]["Retry-After"]["required"] is True
    assert set(errors.STATUS.values()) <= declared_anywhere  # every domain error's status is declared somewhere

