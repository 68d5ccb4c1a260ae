"""Fixtures for the service tests: real servers on 127.0.0.1 with the tiny weights."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.settings import Settings
from service.streams import SourceFactory
from tests.service.rtsp_fixtures import PED2_FRAMES, rtsp_available, write_frames
from tests.service.serving import RunningServer, running_server
from tests.synthetic import make_video

TEST_LIMITS: dict[str, Any] = {
    "device": "cpu",
    "max_upload_bytes": 256 * 1024,
    "max_pixels": 1_000_000,
    "batch_wait_ms": 2.0,
    "log_level": "warning",
}


@pytest.fixture(scope="session")
def service_settings(tiny_weights: Path) -> Callable[..., Settings]:
    """Settings for a test server: the tiny weights, small limits, overrides as keywords."""

    def make(**overrides: Any) -> Settings:
        return Settings(**{"weights": tiny_weights, **TEST_LIMITS, **overrides})

    return make


@pytest.fixture(scope="module")
def vad_server(service_settings: Callable[..., Settings]) -> Iterator[RunningServer]:
    """One server with default test settings, shared by a module's tests (each makes its own streams)."""
    with running_server(service_settings()) as server:
        yield server


@pytest.fixture
def start_server(service_settings: Callable[..., Settings]) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with other settings inside a test; all are stopped at its end."""
    with ExitStack() as stack:

        def start(
            settings: Settings | None = None,
            source_factory: SourceFactory | None = None,
            send_buffer_bytes: int | None = None,
            **overrides: Any,
        ) -> RunningServer:
            return stack.enter_context(
                running_server(settings or service_settings(**overrides), source_factory, send_buffer_bytes)
            )

        yield start


@pytest.fixture(scope="session")
def video() -> np.ndarray:
    """40 synthetic 180x120 BGR frames with an anomaly in the second half."""
    frames, _ = make_video(40, seed=3, anomaly=(20, 39))
    return frames


@pytest.fixture(scope="module")
def camera_frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames for the GStreamer test camera: Ped2 test video 01, else synthetic ones. The camera
    needs Debian's GStreamer RTSP server: missing on a user's machine is a skip, in CI a failure."""
    why = rtsp_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    if (PED2_FRAMES / "000.jpg").is_file():
        return PED2_FRAMES
    return write_frames(tmp_path_factory.mktemp("camera"))
