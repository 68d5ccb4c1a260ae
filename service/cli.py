"""`vad`: the root command, and `vad serve`.

Each package registers its own commands on the root parser: `model.cli` (info, train, evaluate,
recalibrate, export), this module (serve), service/recorder.py (record) and, when the `bench` package is present, `bench.cli`
(bench, calibrate-backends). Heavy imports happen inside each command so `vad --help` stays fast.
Errors the user can fix are printed as one line naming the file or setting and the problem, exit 2.

`vad serve` has one flag per setting of the configuration tree (service/settings.py): `--port` for
VAD_PORT, `--source-stall-timeout-s` for VAD_SOURCE_STALL_TIMEOUT_S, ...; a flag given on the
command line overrides the environment, and a bad value stops the command before anything starts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import signal
import sys
import types
import typing
from pathlib import Path

from pydantic import SecretStr

from model.cli import CliError
from model.cli import register as register_model_commands

from .recorder import add_record_parser
from .settings import (
    SECTIONS,
    SettingInfo,
    Settings,
    SettingsError,
    all_settings,
    environment_value,
    type_name,
)


def _flag_type(annotation: object) -> tuple[object, list[str] | None]:
    """argparse type and choices for a setting's annotation."""
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
    return str, None  # networks, JSON objects: validated by the settings tree


def _help(info: SettingInfo) -> str:
    default = info.default
    shown = "" if default in (None, (), {}) or isinstance(default, SecretStr) else f"; default {default}"
    return f"{info.description} ({type_name(info.annotation).replace(chr(92), '')}{shown}; env {info.env})"


def add_serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="run the HTTP/WebSocket scoring service",
        description="Run the service. Every setting is a flag here and an environment variable "
        "(VAD_<NAME>, e.g. VAD_PORT=9000); a flag overrides the environment. The table of every setting "
        "is in docs/configuration.md.",
    )
    groups = {name: p.add_argument_group(f"{name} settings", (section.__doc__ or "").strip())
              for name, section in SECTIONS.items()}
    for info in all_settings():
        group = groups[info.section]
        if info.annotation is bool:
            group.add_argument(info.flag, dest=info.key, action=argparse.BooleanOptionalAction, default=None,
                               help=_help(info))
            continue
        kind, choices = _flag_type(info.annotation)
        group.add_argument(info.flag, dest=info.key, type=kind, choices=choices, default=None,  # type: ignore[arg-type]
                           help=_help(info), metavar=info.key.upper() if choices is None else None)
    p.set_defaults(func=cmd_serve)


def load_settings(args: argparse.Namespace) -> Settings:
    given = {i.key: getattr(args, i.key) for i in all_settings() if getattr(args, i.key, None) is not None}
    try:
        return Settings.load(given)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc


def cmd_serve(args: argparse.Namespace) -> None:
    from . import logs
    from .app import ServiceServer, create_app, server_config

    settings = load_settings(args)
    server_settings = settings.server
    log_config = logs.configure(server_settings.log_level, server_settings.log_format)
    if not settings.model.weights.is_file():
        logging.getLogger("vad.serve").error(
            "weights file %s does not exist (train one with `vad train`, or pass --weights); "
            "serving anyway, /readyz answers 503 until restarted with weights", settings.model.weights,
        )
    app = create_app(settings)
    server = ServiceServer(server_config(app, settings, log_config=log_config), app)

    def terminated(signum: int, frame: object) -> None:
        # uvicorn shuts down gracefully on SIGTERM, then raises it again: with this handler then in
        # place, a graceful stop exits with status 0 (as after Ctrl-C) instead of dying of SIGTERM.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminated)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, raised again by uvicorn after its graceful shutdown
        server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's status when the server could not start (e.g. port in use)


def build_parser(with_bench: bool = True) -> argparse.ArgumentParser:
    """with_bench=False leaves out the bench commands: `vad serve` never loads the bench package."""
    parser = argparse.ArgumentParser(prog="vad", description="DESDnet video anomaly detection")
    sub = parser.add_subparsers(dest="command", required=True)
    register_model_commands(sub)
    add_serve_parser(sub)
    add_record_parser(sub)
    if with_bench and importlib.util.find_spec("bench") is not None and importlib.util.find_spec("bench.cli"):
        importlib.import_module("bench.cli").register(sub)
    return parser


def apply_shared_settings(args: argparse.Namespace) -> None:
    """The offline commands (evaluate, bench, calibrate-backends) honour the variables they share with
    `vad serve` when no flag is given: the artefact cache (VAD_CACHE_DIR) and, for the record that
    `--backend auto` reads, VAD_BACKEND_RECORD, so a record written here is where the service looks."""
    if args.command == "serve":
        return
    if getattr(args, "cache_dir", "absent") is None:
        args.cache_dir = environment_value("model", "cache_dir")
    if args.command == "calibrate-backends" and getattr(args, "output", None) is None:
        args.output = environment_value("model", "backend_record")


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    command = next((word for word in words if not word.startswith("-")), None)
    args = build_parser(with_bench=command != "serve").parse_args(argv)
    apply_shared_settings(args)
    from model.data import DatasetError
    from model.train import TrainError
    from model.weights import WeightsError

    try:
        args.func(args)
    except (CliError, DatasetError, WeightsError, TrainError) as exc:
        print(f"vad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, ImportError) as exc:
        # Bad option values (--image-size 100, an unknown backend) and missing optional packages.
        print(f"vad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vad {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
