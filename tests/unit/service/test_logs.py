"""Log lines of `vad serve`: secrets masked, control characters escaped, JSON on request, and no
ERROR for a WebSocket upgrade refused on purpose."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from service.logs import (
    JsonFormatter,
    RefusedHandshakeFilter,
    SafeFormatter,
    escape_controls,
    logging_config,
    mask_query_secrets,
)


@pytest.mark.parametrize(("text", "expected"), [
    ('127.0.0.1:5 - "WebSocket /v1/scores?token=s3cret" [accepted]',
     '127.0.0.1:5 - "WebSocket /v1/scores?token=***" [accepted]'),
    ("GET /x?a=1&api_key=abc&b=2 HTTP/1.1", "GET /x?a=1&api_key=***&b=2 HTTP/1.1"),
    ("GET /v1/streams/abc/heatmap?frame_index=3&overlay=true", "GET /v1/streams/abc/heatmap?frame_index=3&overlay=true"),
    ("rtsp://cam/s?password=x&channel=1", "rtsp://cam/s?password=***&channel=1"),
])
def test_query_secrets_are_masked(text: str, expected: str) -> None:
    assert mask_query_secrets(text) == expected


def test_control_characters_are_escaped() -> None:
    assert escape_controls("evil\nINFO forged\r\x1b[31mred\ttab") == "evil\\nINFO forged\\x0d\\x1b[31mred\ttab"


def record(message: str, *args: object, name: str = "vad.streams", level: int = logging.INFO,
           exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, message, args, exc_info)


def test_text_lines_cannot_be_forged_and_keep_tracebacks() -> None:
    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    line = formatter.format(record("stream %s (%s) created", "abc", "gate\nINFO vad.api: forged"))
    assert line == "INFO vad.streams: stream abc (gate\\nINFO vad.api: forged) created"
    with_traceback = formatter.format(record("failed ?token=%s", "s3cret", level=logging.ERROR, exc=True))
    first, *rest = with_traceback.splitlines()
    assert first == "ERROR vad.streams: failed ?token=***" and rest[0].startswith("Traceback") and "ValueError" in rest[-1]


def test_json_lines() -> None:
    out = json.loads(JsonFormatter().format(record("stream %s\nx ?token=%s", "a", "b", exc=True)))
    assert (out["level"], out["logger"], out["message"]) == ("info", "vad.streams", "stream a\\nx ?token=***")
    assert "ValueError: boom" in out["exception"] and out["time"].endswith("Z")


def test_the_refused_handshake_error_is_dropped_and_nothing_else() -> None:
    keep = RefusedHandshakeFilter()
    assert not keep.filter(record("ASGI callable returned without completing handshake.", name="uvicorn.error",
                                  level=logging.ERROR))
    assert keep.filter(record("Exception in ASGI application\n", name="uvicorn.error", level=logging.ERROR))


def test_the_config_routes_uvicorn_through_the_safe_formatter() -> None:
    stream = io.StringIO()
    config = logging_config("info", "json")
    config["handlers"]["default"]["stream"] = stream
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(lg.handlers[:], lg.filters[:], lg.level, lg.propagate) for lg in loggers]
    try:
        logging.config.dictConfig(config)
        logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "127.0.0.1:1", "/v1/scores?token=t")
        logging.getLogger("uvicorn.error").error("ASGI callable returned without completing handshake.")
    finally:  # leave logging as the other tests found it
        for lg, (handlers, filters, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers[:], lg.filters[:], lg.propagate = handlers, filters, propagate
            lg.setLevel(level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ['127.0.0.1:1 - "WebSocket /v1/scores?token=***" [accepted]']
