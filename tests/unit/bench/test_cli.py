"""bench/cli.py: `vad bench` and `vad calibrate-backends` parse their flags (no command is run)."""

from __future__ import annotations

import argparse

import pytest

from bench import cli


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vad")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_bench_defaults_and_lists(parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args(["bench"])
    assert args.func is cli.cmd_bench and args.config == "lite" and args.pairs is None
    assert (args.backends, args.precisions) == (("torch", "onnxruntime", "openvino"), ("fp32", "bf16", "int8"))
    assert (args.batch_sizes, args.streams, args.e2e_transports) == ((1, 4, 8), (1, 2, 4), ("http", "websocket"))
    args = parser.parse_args(["bench", "--pairs", "torch/fp32,openvino/int8", "--e2e-transports", "websocket",
                              "--batch-sizes", "1,4"])
    assert args.pairs == (("torch", "fp32"), ("openvino", "int8"))
    assert args.e2e_transports == ("websocket",) and args.batch_sizes == (1, 4)


@pytest.mark.parametrize("flags", [
    ["--pairs", "torch/int8"], ["--e2e-transports", "grpc"], ["--batch-sizes", "0"], ["--backends", "tensorrt"],
])
def test_bench_refuses_bad_values(parser: argparse.ArgumentParser, flags: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", *flags])


def test_calibrate_backends_flags(parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args(["calibrate-backends", "--weights", "w.safetensors", "--data", "d"])
    assert args.func is cli.cmd_calibrate_backends and (args.clips, args.seconds) == (240, 3.0)
    assert args.output is None and args.cache_dir is None
