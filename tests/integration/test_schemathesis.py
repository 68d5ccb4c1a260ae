"""Schemathesis against a real server: requests generated from the live /openapi.json, every answer
checked against that document (no 5xx, only declared status codes, content types, bodies and headers).

Two runs: a server without a token, and one with `api_token` and `metrics_require_token` set, where
every request carries the bearer header. Bounded and reproducible: MAX_EXAMPLES schema-valid and as
many schema-invalid requests per operation, derandomized Hypothesis (a fixed seed), no deadline.

Why not `schemathesis.pytest.from_fixture(...).parametrize()`: on pytest >= 9.2 it fails before the
first request (it sets `request.node._nodeid`, which pytest no longer has). The strategies it would
use are public (`APIOperation.as_strategy`), so each operation runs under plain Hypothesis here.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.serving import RunningServer

TOKEN = "schemathesis-token"
MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
    suppress_health_check=list(HealthCheck),
)


def live_schema(server: RunningServer) -> schemathesis.BaseSchema:
    """The document the server publishes (it needs no token), aimed at that server. An explicit
    default configuration: a schemathesis.toml lying around must not change the run."""
    return schemathesis.openapi.from_url(server.url("/openapi.json"), config=schemathesis.Config())


def run_schemathesis(schema: schemathesis.BaseSchema, headers: dict[str, str] | None = None) -> None:
    """Every operation with schema-valid, then schema-invalid data; every failure reported at once."""
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # an operation Schemathesis cannot read is an error of the document
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @HYPOTHESIS
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid: no parameters, or none that can be sent
                assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request can be generated"
            except Exception as exc:  # Schemathesis's FailureGroup, with the failing request as curl
                failures.append(f"{operation.label} ({mode.value} data): {exc}")
            else:
                tested += 1
    assert tested >= 10, f"only {tested} operation runs"
    assert not failures, "\n\n".join(failures)


def test_api_conforms_to_its_openapi_document(start_server) -> None:
    run_schemathesis(live_schema(start_server(max_streams=4)))


def test_api_with_token_conforms_to_its_openapi_document(start_server) -> None:
    server = start_server(max_streams=4, api_token=TOKEN, metrics_require_token=True)
    schema = live_schema(server)
    assert "HTTPBearer" in schema.raw_schema["components"]["securitySchemes"]
    run_schemathesis(schema, headers={"Authorization": f"Bearer {TOKEN}"})
