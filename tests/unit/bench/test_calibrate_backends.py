"""The offline half of `--backend auto`: `vad calibrate-backends` measures every backend, checks its
parity with torch fp32 and writes the record that the service reads (tests/integration/test_backend_auto.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.calibrate_backends import calibrate_backends, parity
from model.backends.record import choose, record_path
from model.data import FrameSet, list_videos
from model.train import patch_scores_of
from model.weights import Calibration, load_weights


def test_calibrate_backends_writes_the_record_auto_reads(tiny_weights: Path, synthetic_root: Path,
                                                          tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    content, path = calibrate_backends(
        tiny_weights, synthetic_root, backends=("torch", "onnxruntime"), precisions=("fp32",),
        seconds=0.02, clips=24, threads=1, cache_dir=cache, progress=False,
    )
    assert path == record_path(content["weights_sha256"], "cpu", cache) and path.is_file()
    assert [(e["backend"], e["precision"]) for e in content["entries"]] == [("torch", "fp32"), ("onnxruntime", "fp32")]
    # Each backend is calibrated as training calibrates: the held-out (here: last) training video.
    model = load_weights(tiny_weights).model
    train_dir = synthetic_root / "training"
    as_trained = Calibration.from_scores(
        patch_scores_of(model, FrameSet.load(train_dir, model.config, list_videos(train_dir)[-1:]))
    )
    for e in content["entries"]:
        assert e["fps"] > 0 and e["passed"], e
        assert e["parity"]["spearman"] > 0.999 and e["parity"]["auc_delta"] == pytest.approx(0, abs=1e-6)
        own = Calibration(**e["calibration"])
        assert own.count == as_trained.count
        assert own.log_mean == pytest.approx(as_trained.log_mean, abs=1e-4)
        assert own.log_std == pytest.approx(as_trained.log_std, rel=1e-3)
    assert json.loads(path.read_text())["entries"] == json.loads(json.dumps(content["entries"]))
    best, _ = choose(json.loads(path.read_text()), "cpu")
    assert best is not None and best["fps"] == max(e["fps"] for e in content["entries"])


def test_parity_fails_on_reordered_or_shifted_scores() -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.01, 0.1, 200)
    labels = (np.arange(200) >= 150).astype(np.int64)
    cal = Calibration(log_mean=-3.0, log_std=0.3)
    assert parity(reference * 1.01, reference, cal, labels)["failed"] == []
    assert any("spearman" in f for f in parity(rng.permutation(reference), reference, cal, None)["failed"])
    assert any("alarm decision" in f for f in parity(reference * 1.5, reference, cal, None)["failed"])


def test_a_backend_s_own_calibration_absorbs_a_uniform_bias_but_not_noise() -> None:
    """A quantised backend that scores every clip 1.5x higher keeps the ranking; calibrated on its own
    held-out scores, its z-scores match the reference's and it passes. Noise is not calibrated away."""
    rng = np.random.default_rng(1)
    held_out = torch.from_numpy(rng.uniform(0.01, 0.05, 180))
    reference = rng.uniform(0.01, 0.1, 200)
    ref_cal = Calibration.from_scores(held_out)
    biased_cal = Calibration.from_scores(held_out * 1.5)
    assert biased_cal.threshold == pytest.approx(ref_cal.threshold, abs=1e-3)
    result = parity(reference * 1.5, reference, ref_cal, None, biased_cal)
    assert result["failed"] == [] and result["p95_abs_z_shift"] < 1e-6 and result["calibration"] == "own"
    assert result["decision_flips"] == 0 and result["alarm_rate"] == result["alarm_rate_reference"] > 0
    noisy = parity(reference * rng.lognormal(0, 0.3, 200), reference, ref_cal, None, ref_cal)
    assert noisy["decision_flips"] > 0.02 and any("alarm decision" in f for f in noisy["failed"])
