"""Logging of `vad serve`: one configuration for the service's and uvicorn's loggers.

Every record goes through `SafeFormatter` (or `JsonFormatter`, with VAD_LOG_FORMAT=json):
- secrets in query strings are masked (`?token=...` of WebSocket clients appears in uvicorn's
  access lines; the parameter names are netguard's SECRET_QUERY_KEYS);
- control characters in the message are escaped, so a client-chosen string (a stream name with a
  newline, say) cannot forge a log line; tracebacks stay multi-line.
`RefusedHandshakeFilter` drops the ERROR uvicorn (0.54) logs after every WebSocket upgrade the
service refuses on purpose with a denial response (401, 404, 503): uvicorn already logs the refusal
itself at INFO ("connection rejected (401 Unauthorized)").
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from .netguard import REDACTED, SECRET_QUERY_KEYS

SECRET_PARAMETER = re.compile(r"([?&;](?:[^=&\s\"']*)=)([^&\s\"']*)")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\n")


def mask_query_secrets(text: str) -> str:
    """'GET /v1/scores?token=abc&x=1' -> 'GET /v1/scores?token=***&x=1'."""

    def mask(match: re.Match[str]) -> str:
        name = match.group(1)
        return name + REDACTED if SECRET_QUERY_KEYS.search(name) and match.group(2) else match.group(0)

    return SECRET_PARAMETER.sub(mask, text)


def escape_controls(text: str) -> str:
    """Newlines and other control characters as visible escapes (\\n, \\x1b, ...); tabs kept."""
    return CONTROL.sub(lambda m: "\\n" if m.group(0) == "\n" else f"\\x{ord(m.group(0)):02x}", text)


def safe_message(record: logging.LogRecord) -> str:
    return escape_controls(mask_query_secrets(record.getMessage()))


class SafeFormatter(logging.Formatter):
    """Text lines: '2026-11-30 10:00:00,000 INFO vad.streams: message' with the message made safe."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        record.message = safe_message(record)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (made safe), exception when any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": safe_message(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class RefusedHandshakeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def logging_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """A logging.config.dictConfig for the root logger and uvicorn's, for uvicorn.Config(log_config=...)."""
    formatter = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json"
        else {"()": f"{__name__}.SafeFormatter", "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"refused_handshake": {"()": f"{__name__}.RefusedHandshakeFilter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {
            # uvicorn's loggers hand their records to the root handler: one format for everything.
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True, "filters": ["refused_handshake"]},
            "uvicorn.access": {"level": level, "handlers": [], "propagate": True},
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure(level: str, log_format: str = "text") -> dict[str, Any]:
    """Apply `logging_config` now (before uvicorn starts) and return it for uvicorn.Config."""
    import logging.config

    config = logging_config(level, log_format)
    logging.config.dictConfig(config)
    return config
