"""Every fixture of the test suite, in one place. Helpers (servers, cameras, synthetic data) live in
tests/support/; unit tests are under tests/unit/, tests that start real servers under tests/integration/."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import DESDnet, DESDnetConfig
from model.train import train
from model.weights import Calibration, save_weights
from service.settings import Settings
from service.streams import SourceFactory
from tests.support.data import PED2, TINY
from tests.support.rtsp import PED2_FRAMES, rtsp_available, write_frames
from tests.support.serving import RunningServer, running_server
from tests.support.synthetic import make_video, write_dataset
from tests.support.training import EPOCHS, FRAMES, TEST_VIDEOS, TRAIN_VIDEOS, TrainedRun, tiny_train_config

# Two cores: one intra-op thread per test process keeps runs predictable.
torch.set_num_threads(1)

# Small limits for test servers; every test server starts from these.
TEST_LIMITS: dict[str, Any] = {
    "device": "cpu",
    "backend": "torch",  # deterministic: no background autotune (tests/integration/test_autotune.py has it)
    "max_upload_bytes": 256 * 1024,
    "max_pixels": 1_000_000,
    "batch_wait_ms": 2.0,
    "log_level": "warning",
    # The weights' calibration from the first frame, as these tests expect; per-stream calibration
    # ("auto", the service's default, and "learn") has its own tests (tests/integration/test_scenes.py).
    "calibration": "model",
}


# --- data and weights ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ped2_root() -> Path:
    """The real UCSD Ped2 copy. Absent on a user's machine: skip there, but never in CI."""
    if not (PED2 / "training").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{PED2} is missing in CI")
        pytest.skip(f"{PED2} not present on this machine")
    return PED2


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def tiny_config() -> DESDnetConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained tiny network saved as a real weights file (for plumbing, not accuracy)."""
    torch.manual_seed(0)
    model = DESDnet(TINY).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    calibration = Calibration.from_scores(torch.linspace(0.01, 0.02, 50))
    save_weights(path, model, torch.zeros(TINY.widths[3]), 0.5, calibration, {"note": "untrained"})
    return path


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("synthetic-eval"),
        train_videos=TRAIN_VIDEOS,
        test_videos=TEST_VIDEOS,
        frames=FRAMES,
    )


@pytest.fixture(scope="session")
def trained(eval_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One short training run on synthetic data, shared by the train, evaluate and CLI tests."""
    out = tmp_path_factory.mktemp("trained")
    cfg = tiny_train_config(eval_root, out, epochs=EPOCHS, max_clips_per_epoch=64)
    state = train(cfg)
    return TrainedRun(eval_root, cfg.output, TINY, cfg, state)


@pytest.fixture(scope="session")
def video() -> np.ndarray:
    """40 synthetic 180x120 BGR frames with an anomaly in the second half."""
    frames, _ = make_video(40, seed=3, anomaly=(20, 39))
    return frames


# --- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def service_settings(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Settings]:
    """Settings for a test server: the tiny weights, small limits, overrides as keywords (flat names,
    as in `vad serve --help` without the dashes: max_batch, source_open_timeout_s, ...)."""

    def make(**overrides: Any) -> Settings:
        # A state folder of its own per server (learned calibrations), and only the tiny weights as models.
        state = tmp_path_factory.mktemp("state")
        return Settings.from_flat(**{"weights": tiny_weights, "models_dir": tiny_weights.parent, "data_dir": state,
                                     **TEST_LIMITS, **overrides})

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
