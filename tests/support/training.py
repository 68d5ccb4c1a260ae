"""Helpers of the model tests: the short training run on synthetic data (see the `trained` fixture in
tests/conftest.py) and helpers that build broken datasets."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from model.network import DESDnetConfig
from model.train import TrainConfig, TrainState
from tests.support.data import TINY

# 3 normal training videos (the last one is held out for calibration), 2 test videos whose second
# half shows a large, fast, bright square. 4 epochs of 64 clips at lr 1e-3 take a few seconds and
# give AUC 1.0 under both protocols for every seed tried (0-3); the tests ask for > 0.9.
TRAIN_VIDEOS = 3
TEST_VIDEOS = 2
FRAMES = 40
EPOCHS = 4


@dataclass(frozen=True)
class TrainedRun:
    data: Path
    weights: Path
    config: DESDnetConfig
    train_config: TrainConfig
    state: TrainState


def tiny_train_config(data: Path, out: Path, **changes: object) -> TrainConfig:
    """A TrainConfig for the tiny network that runs in well under a second per epoch."""
    base: dict[str, object] = dict(
        data=data,
        output=out / "tiny.safetensors",
        model=TINY,
        epochs=2,
        batch_size=4,
        lr=1e-3,
        erasure_batches=4,
        max_clips_per_epoch=16,
        checkpoint_dir=out / "ckpt",
        progress=False,
    )
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
