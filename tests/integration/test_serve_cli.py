"""`vad serve`: flags mirror the settings, bad values fail clearly, missing weights still serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.cli import build_parser, main
from service.settings import all_settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_has_a_flag() -> None:
    args = build_parser().parse_args(
        ["serve", "--port", "9001", "--max-batch", "3", "--device", "cpu", "--metrics-require-token",
         "--api-token", "t", "--threshold", "2.5", "--weights", "w.safetensors"]
    )
    assert (args.port, args.max_batch, args.device, args.metrics_require_token) == (9001, 3, "cpu", True)
    assert (args.api_token, args.threshold, args.weights) == ("t", 2.5, Path("w.safetensors"))
    serve = next(a for a in build_parser()._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
                 if a.prog.endswith("serve"))
    flags = {opt for action in serve._actions for opt in action.option_strings}
    assert {info.flag for info in all_settings()} <= flags
    assert len({info.env for info in all_settings()}) == len(all_settings())  # every variable defined once


def test_invalid_flag_values_fail_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--max-batch", "0"]) == 2
    assert "vad serve: error: --max-batch='0': Input should be greater than or equal to 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--device", "tpu"])


def test_serve_without_weights_starts_and_is_not_ready(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    missing = tmp_path / "nope.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--weights", str(missing), "--port", str(port),
         "--device", "cpu", "--log-level", "info"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "vad serve did not start"
            time.sleep(0.2)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 503 and "no such weights file" in ready.json()["reason"]
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0
    assert f"weights file {missing} does not exist" in output
