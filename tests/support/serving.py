"""A real uvicorn server running `create_app(settings)` on 127.0.0.1 in a thread, for tests.

    with running_server(Settings.from_flat(weights=...)) as server:
        server.url("/healthz"); server.ws_url("/v1/scores"); server.context  # the live ServiceContext
"""

from __future__ import annotations

import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import cv2
import httpx
import numpy as np
import uvicorn
from PIL import Image

from service.app import ServiceServer, create_app, server_config
from service.context import ServiceContext
from service.settings import Settings
from service.streams import SourceFactory


@dataclass
class RunningServer:
    port: int
    settings: Settings
    server: uvicorn.Server
    app: object
    thread: threading.Thread | None = None  # the thread running the server

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def context(self) -> ServiceContext:
        return self.app.state.service  # type: ignore[attr-defined]

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30.0, **kwargs)  # type: ignore[arg-type]

    def metrics(self, headers: dict[str, str] | None = None) -> str:
        return httpx.get(self.url("/metrics"), timeout=10.0, headers=headers).text


@contextmanager
def running_server(
    settings: Settings,
    source_factory: SourceFactory | None | Literal["auto"] = None,
    send_buffer_bytes: int | None = None,
) -> Iterator[RunningServer]:
    """send_buffer_bytes: a small kernel send buffer for accepted connections (they inherit it from
    the listening socket), so a client that stops reading blocks the server's sends quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    sock.bind(("127.0.0.1", 0))  # a free port, held from the start: no race with other tests
    port = sock.getsockname()[1]
    app = create_app(settings, source_factory=source_factory)
    # ServiceServer, as `vad serve` runs: its graceful shutdown closes WebSockets with 1001 first.
    server = ServiceServer(server_config(app, settings, log_level="warning", timeout_graceful_shutdown=5), app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(port, settings, server, app, thread)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def encode(frame: np.ndarray, kind: str = ".jpg") -> bytes:
    ok, data = cv2.imencode(kind, frame)
    assert ok
    return data.tobytes()


def png_declaring(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR is rewritten to declare width x height (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    import struct
    import zlib

    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if labels is None or all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return 0.0
