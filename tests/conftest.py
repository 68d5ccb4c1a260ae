"""Shared fixtures: synthetic data, tiny weights, and the real Ped2 copy when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from model import DESDnet, DESDnetConfig
from model.weights import Calibration, save_weights
from tests.synthetic import write_dataset

# Two cores: one intra-op thread per test process keeps runs predictable.
torch.set_num_threads(1)

PED2 = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ped2"
TINY = DESDnetConfig(channels=1, image_size=32, base_width=4, patch_size=4, patch_stride=2)


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
