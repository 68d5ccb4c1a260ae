"""`vad serve` (and, when their module is present, `vad export` / `vad bench`), registered on the
`vad` parser by service/cli.py.

The serve flags are generated from the Settings fields, so every setting has a flag
(--max-batch for VAD_MAX_BATCH, ...). A flag given on the command line overrides the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import signal
import types
import typing
from pathlib import Path

from pydantic import SecretStr, ValidationError

from .settings import Settings


def _flag_type(annotation: object) -> tuple[object, list[str] | None]:
    """argparse type and choices for a Settings annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    if annotation in (int, float):
        return annotation, None
    if annotation is Path:
        return Path, None
    if annotation is SecretStr:
        return str, None
    return str, None


def add_serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="run the HTTP/WebSocket scoring service",
        description="Every flag also reads from the environment as VAD_<NAME> (e.g. VAD_PORT=9000).",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or ''} (env VAD_{name.upper()})"
        if field.annotation is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kind, choices = _flag_type(field.annotation)
        p.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_text)  # type: ignore[arg-type]
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .app import ServiceServer, create_app
    from .cli import CliError

    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        raise CliError(problems) from exc
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.weights.is_file():
        logging.getLogger("vad.serve").error(
            "weights file %s does not exist (train one with `vad train`, or pass --weights); "
            "serving anyway, /readyz answers 503 until restarted with weights", settings.weights,
        )
    app = create_app(settings)
    server = ServiceServer(
        # Score messages are a few hundred bytes of JSON: compressing each costs more CPU than
        # it saves on the wire, on the cores the model needs.
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                       timeout_graceful_shutdown=10, ws_per_message_deflate=False),
        app,
    )

    def terminated(signum: int, frame: object) -> None:
        # uvicorn shuts down gracefully on SIGTERM, then raises it again: with this handler then in
        # place, a graceful stop exits with status 0 (as after Ctrl-C) instead of dying of SIGTERM.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminated)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, raised again by uvicorn after its graceful shutdown
        server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's status when the server could not start (e.g. port in use)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_serve_parser(sub)
    # `vad export` / `vad bench` live in their own module (ONNX/OpenVINO backends).
    if importlib.util.find_spec("service.bench_commands") is not None:
        importlib.import_module("service.bench_commands").register(sub)
