"""Per-stream calibration: robust learning, the auto decision, the store; and ignore-region masks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model.scoring import background_level, box_means, patch_score, patch_score_squared
from model.weights import Calibration
from service.calibration import (
    MIN_SIGMA,
    CalibrationChoice,
    CalibrationMode,
    CalibrationPolicy,
    CalibrationStatus,
    CalibrationStore,
    DomainMonitor,
    StreamCalibration,
    learn,
)
from service.domain import InvalidRegion
from service.regions import keep_mask, parse_regions

SHA = "a" * 64
MODEL = Calibration(log_mean=math.log(0.001), log_std=0.25, threshold=3.8,
                    background_log_mean=math.log(1e-5), background_log_std=0.1)


def normal_scores(n: int, seed: int = 0, mu: float = -6.0, sigma: float = 0.3) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(mu, sigma, n))


def test_learning_gives_the_median_and_mad_and_shrugs_off_a_brief_anomaly() -> None:
    scores = normal_scores(1500)
    clean = learn(scores, stream_name="a", model="m", weights_sha256=SHA)
    assert clean.log_mean == pytest.approx(-6.0, abs=0.03) and clean.log_std == pytest.approx(0.3, abs=0.03)
    # 3 % of the learning window anomalous (45 frames at 10 sigma): the statistics barely move.
    spoiled = scores.copy()
    spoiled[700:745] = np.exp(-6.0 + 10 * 0.3)
    robust = learn(spoiled, stream_name="a", model="m", weights_sha256=SHA)
    assert abs(robust.log_mean - clean.log_mean) < 0.03 and abs(robust.log_std - clean.log_std) < 0.03
    logs = np.log(spoiled)
    assert logs.std() > 1.5 * robust.log_std  # a plain standard deviation would have grown
    assert robust.z_max == pytest.approx(10, abs=1)
    # A frozen scene: the spread has a floor, so a flicker is not ten sigmas.
    assert learn(np.full(100, 0.002), stream_name="a", model="m", weights_sha256=SHA).log_std == MIN_SIGMA


def calibration(mode: CalibrationMode, **policy: float) -> StreamCalibration:
    return StreamCalibration(CalibrationChoice(mode), CalibrationPolicy(**{"frames": 50, **policy}), MODEL,
                             stream_name="cam", model="m", weights_sha256=SHA)


def test_auto_keeps_the_model_calibration_for_its_scene_and_learns_another() -> None:
    own = calibration(CalibrationMode.AUTO)
    for _ in range(4):
        assert not own.observe(0.001, 1e-5 * 1.1) and own.status == CalibrationStatus.CHECKING and not own.alarms
    # An anomaly: still its scene. The statistics in use do not change, so the smoothing goes on (False).
    assert not own.observe(0.02, 1e-5) and own.status == CalibrationStatus.MODEL and own.alarms
    assert own.normalize(0.001) == pytest.approx(0.0)

    other = calibration(CalibrationMode.AUTO)
    for _ in range(5):
        other.observe(0.01, 1e-5 * math.exp(2.0))  # background z = 20
    assert other.status == CalibrationStatus.LEARNING and "median z 20.0 > 8" in other.reason
    for score in normal_scores(44):
        other.observe(float(score), None)
    assert other.status == CalibrationStatus.LEARNING and other.view().frames_learned == 49
    assert other.view().progress == pytest.approx(0.98)
    assert other.observe(0.0025, None) and other.status == CalibrationStatus.LEARNED and other.alarms
    assert other.view().frames_learned == 50


def test_weights_without_background_statistics_fall_back_to_the_patch_z() -> None:
    old = StreamCalibration(CalibrationChoice(CalibrationMode.AUTO), CalibrationPolicy(frames=50),
                            Calibration(log_mean=math.log(0.001), log_std=0.25), stream_name="c", model="m",
                            weights_sha256=SHA)
    assert old.domain_limit() == 3.0
    for _ in range(5):
        old.observe(0.001 * math.exp(0.25 * 4), 1.0)  # patch z 4; the background is ignored
    assert old.status == CalibrationStatus.LEARNING


def test_fixed_model_relearn_and_back() -> None:
    fixed = StreamCalibration(CalibrationChoice(CalibrationMode.FIXED, -5.0, 0.5), CalibrationPolicy(), MODEL,
                              stream_name="c", model="m", weights_sha256=SHA)
    assert fixed.status == CalibrationStatus.FIXED and fixed.normalize(math.exp(-4.0)) == pytest.approx(2.0)
    assert fixed.raw_score(2.0) == pytest.approx(math.exp(-4.0))
    model = calibration(CalibrationMode.MODEL)
    assert model.status == CalibrationStatus.MODEL and not model.observe(1.0, 1.0)
    model.relearn()
    assert model.status == CalibrationStatus.LEARNING and model.choice.mode == CalibrationMode.LEARN
    model.use_model()
    assert model.status == CalibrationStatus.MODEL


def test_the_store_keeps_calibrations_by_model_and_name_and_refuses_other_weights(tmp_path) -> None:
    store = CalibrationStore(tmp_path)
    learned = learn(normal_scores(100), stream_name="gate/1", model="ped2-lite", weights_sha256=SHA)
    store.save(learned)
    assert store.load("ped2-lite", "gate/1", SHA) == (learned, None)
    assert store.load("ped2-lite", "gate_1", SHA) == (None, None)  # file-safe names never collide
    assert store.load("other", "gate/1", SHA) == (None, None)
    none, reason = store.load("ped2-lite", "gate/1", "b" * 64)
    assert none is None and "other weights" in reason
    path = next(tmp_path.rglob("*.json"))
    path.write_text("{not json")
    none, reason = store.load("ped2-lite", "gate/1", SHA)
    assert none is None and "unreadable" in reason
    path.write_text(json.dumps({**json.loads(json.dumps(learned.__dict__)), "log_std": 0.0}))
    assert "invalid statistics" in store.load("ped2-lite", "gate/1", SHA)[1]
    store.delete("ped2-lite", "gate/1")
    assert store.load("ped2-lite", "gate/1", SHA) == (None, None)
    assert not list(tmp_path.rglob("*.tmp"))
    CalibrationStore(None).save(learned)  # no folder: nothing stored, nothing raised


def test_the_domain_monitor_takes_the_median_of_recent_frames() -> None:
    monitor = DomainMonitor(3)
    assert monitor.median() is None
    for value in (100.0, 1.0, 2.0, 3.0):
        monitor.add(value)
    assert monitor.median() == 2.0


# --- ignore regions and the masked score -------------------------------------------------------------


def test_polygons_are_checked_with_a_message_naming_them() -> None:
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    assert parse_regions([square], (20, 20)).as_lists() == [[[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]]
    for polygons, message in (
        ([square, [[0, 0], [1, 1]]], r"ignore_regions\[1\]: a polygon needs at least 3 points"),
        ([[[0, 0], [5, 5], [9, 9]]], "no area"),
        ([[[0, 0], [5, -1], [9, 9]]], r"ignore_regions\[0\]\[1\]: \(5, -1\) lies outside the frame"),
        ([[[0, 0], [50, 0], [9, 9]]], "outside the stream's 20x20 frames"),
        ([square] * 33, "at most 32 polygons"),
    ):
        with pytest.raises(InvalidRegion, match=message):
            parse_regions(polygons, (20, 20))
    regions = parse_regions([[[0, 0], [50, 0], [9, 9]]], None)  # no frame seen yet: accepted
    assert regions.outside((20, 20)) == [0] and regions.outside((60, 60)) == []


def test_the_keep_mask_is_the_share_of_each_model_pixel_left_in() -> None:
    left_half = parse_regions([[[0, 0], [180, 0], [180, 120], [0, 120]]], (360, 120))
    mask = keep_mask(left_half, (360, 120), 32)
    assert mask.shape == (32, 32) and mask.dtype == np.float32
    # Pixels on the polygon's edge belong to it: column 180 of 360, a ninth of model pixel 16.
    assert np.all(mask[:, :16] == 0) and np.all(mask[:, 17:] == 1) and np.allclose(mask[:, 16], 1 - 1 / 11.25)
    # A region on a model pixel's border keeps part of it.
    third = parse_regions([[[0, 0], [120, 0], [120, 120], [0, 120]]], (360, 120))
    row = keep_mask(third, (360, 120), 32)[0]
    assert row[10] == pytest.approx(1 - (121 / 360 * 32 - 10), abs=0.01) and 0 < row[10] < 1
    big = parse_regions([[[0, 0], [3840, 0], [3840, 2160]]], (3840, 2160))  # 4K: rasterised smaller
    assert keep_mask(big, (3840, 2160), 64).mean() == pytest.approx(0.5, abs=0.02)


def test_patch_score_of_a_squared_map_and_the_background_level() -> None:
    errors = torch.randn(2, 32, 32)
    a, b = patch_score(errors, 8, 4), patch_score_squared(errors.square(), 8, 4)
    assert torch.equal(a.score, b.score) and torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    means, _, _ = box_means(errors.square(), 8, 4)
    assert torch.allclose(background_level(errors.square(), 8, 4), means.flatten(1).median(dim=1).values)
    # One bright spot moves the patch score, not the background.
    spot = torch.zeros(1, 32, 32)
    spot[0, 4:8, 4:8] = 1.0
    assert float(patch_score_squared(spot, 8, 4).score[0]) > 0 and float(background_level(spot, 8, 4)[0]) == 0


def test_the_store_keeps_at_most_max_files_dropping_the_oldest(tmp_path) -> None:
    import os

    store = CalibrationStore(tmp_path, max_files=2)
    for i, name in enumerate(("a", "b", "c")):
        store.save(learn(normal_scores(50, seed=i), stream_name=name, model="m", weights_sha256=SHA))
        path = next(p for p in tmp_path.rglob(f"{name}-*.json"))
        os.utime(path, ns=(i * 10**9, i * 10**9))  # a clear order, whatever the file system's clock
    assert store.evicted == 1
    assert store.load("m", "a", SHA) == (None, None)
    assert store.load("m", "b", SHA)[0] is not None and store.load("m", "c", SHA)[0] is not None
