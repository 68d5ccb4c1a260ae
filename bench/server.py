"""`vad serve` in a subprocess on 127.0.0.1, for part (b) of `vad bench` (bench/end_to_end.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

E2E_READY_TIMEOUT_S = 180.0  # int8 artefacts may be built at server start when not cached


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BenchServer:
    """`vad serve` in a subprocess on 127.0.0.1 and a free port; a context manager that stops it.

        with BenchServer(weights, "openvino", "int8", threads=2) as server:
            bench_end_to_end(server.url, 2, 10.0)

    The server gets its settings as flags and, through its environment, VAD_CACHE_DIR (`cache_dir`,
    else `default_cache_dir()`: the cache the model-only part uses, and where `--backend auto` looks
    for its record) and VAD_CALIBRATION_DATA (`calibration_data`, for int8 artefacts built at start,
    unless already set). `threads` 0: torch's default. `root`: the source tree to run (default this
    one; another checkout measures an older version).
    """

    def __init__(
        self,
        weights: Path,
        backend: str = "torch",
        precision: str = "fp32",
        threads: int = 0,
        cache_dir: Path | None = None,
        calibration_data: Path | None = None,
        extra_args: tuple[str, ...] = (),
        ready_timeout: float = E2E_READY_TIMEOUT_S,
        root: Path | None = None,
    ) -> None:
        self.weights, self.backend, self.precision = Path(weights), backend, precision
        self.threads, self.cache_dir, self.calibration_data = threads, cache_dir, calibration_data
        self.extra_args, self.ready_timeout = extra_args, ready_timeout
        self.root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
        self.process: Any = None
        self.url = ""
        self._log: Any = None

    def __enter__(self) -> BenchServer:
        import subprocess
        import sys
        import tempfile

        import httpx

        from model.backends.artefacts import default_cache_dir

        env = dict(os.environ)
        root = str(self.root)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["VAD_CACHE_DIR"] = str(self.cache_dir if self.cache_dir is not None else default_cache_dir())
        if self.calibration_data is not None:
            env.setdefault("VAD_CALIBRATION_DATA", str(self.calibration_data))
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            self._log = tempfile.TemporaryFile()
            command = [
                sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--weights", str(self.weights), "--backend", self.backend, "--precision", self.precision,
                "--device", "cpu", "--torch-threads", str(self.threads), "--log-level", "warning",
                *self.extra_args,
            ]
            self.process = subprocess.Popen(command, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self.ready_timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    r = httpx.get(self.url + "/readyz", timeout=2.0)
                    if r.status_code == 200:
                        return self
                    if "cannot load the model" in r.text:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            output = self._output()
            self.__exit__(None, None, None)
            if attempt < 2 and "address already in use" in output.lower():
                continue
            raise RuntimeError(f"vad serve did not become ready at {self.url}: {output[-2000:]}")
        raise AssertionError("unreachable")

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        import signal
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
