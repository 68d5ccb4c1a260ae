"""model/backends/parity.py: the parity rules both makers of a backend record use (`vad calibrate-backends`
and the service's background autotune), the label-free pieces of the autotune, and writing the record;
also what an OpenVINO "bf16" backend really runs (openvino_backend.runtime_precisions)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model import DESDnet
from model.backends import TorchBackend
from model.backends.cpu import cpu_has_bf16
from model.backends.parity import (
    PARITY_MAX_DECISION_FLIPS,
    PARITY_MIN_SPEARMAN,
    check_entry,
    clip_scores,
    new_record,
    parity,
    shifted_calibration,
    spearman,
    synthetic_anomalies,
    write_record,
)
from model.backends.record import RECORD_FORMAT, choose
from model.weights import Calibration
from tests.support.data import TINY


def test_spearman_ranks_with_ties_and_is_nan_for_constant_input() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 1.0, 2.0])) == pytest.approx(1.0)  # ties
    assert np.isnan(spearman(np.ones(4), a))


def test_parity_passes_small_noise_and_names_each_broken_criterion() -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.01, 0.1, 200)
    cal = Calibration(log_mean=-3.0, log_std=0.3)
    ok = parity(reference * rng.uniform(0.999, 1.001, 200), reference, cal, None)
    assert ok["failed"] == [] and ok["spearman"] > PARITY_MIN_SPEARMAN and ok["auc"] is None
    broken = parity(rng.permutation(reference), reference, cal, None)
    assert any("spearman" in f for f in broken["failed"])
    shifted = parity(reference * 1.5, reference, cal, None)  # the reference's calibration: alarms move
    assert shifted["decision_flips"] > PARITY_MAX_DECISION_FLIPS and any("alarm" in f for f in shifted["failed"])
    labels = (np.arange(200) >= 150).astype(np.int64)
    worse = reference.copy()
    worse[150:] = reference[:50]  # the anomalous clips score like normal ones: AUC drops
    assert any("AUC" in f for f in parity(worse, reference, cal, labels)["failed"])


def test_check_entry_fills_calibration_parity_and_passed_and_the_reference_always_passes() -> None:
    reference = np.linspace(0.01, 0.1, 50)
    cal = Calibration(log_mean=-3.0, log_std=0.3)
    torch_entry = check_entry({"backend": "torch", "precision": "fp32"}, reference, reference, cal, None, cal)
    assert torch_entry["passed"] and torch_entry["calibration"] == asdict(cal)
    bad = check_entry({"backend": "openvino", "precision": "int8"}, reference[::-1].copy(), reference, cal, None, cal)
    assert not bad["passed"] and bad["parity"]["failed"]


def test_a_shifted_calibration_absorbs_a_uniform_bias_and_keeps_the_threshold() -> None:
    rng = np.random.default_rng(2)
    weights = Calibration.from_scores(torch.from_numpy(rng.uniform(0.01, 0.05, 100)))
    normal = rng.uniform(0.01, 0.05, 64)
    moved = shifted_calibration(weights, normal, normal * 1.5)
    assert moved.threshold == weights.threshold and moved.log_std == weights.log_std
    assert moved.log_mean == pytest.approx(weights.log_mean + np.log(1.5))
    assert moved.normalize(0.03 * 1.5) == pytest.approx(weights.normalize(0.03))
    assert moved.quantiles["p50"] == pytest.approx(weights.quantiles["p50"] * 1.5)
    both = np.concatenate([normal, rng.uniform(0.05, 0.5, 64)])
    result = parity(both * 1.5, both, weights, None, moved)
    assert result["failed"] == [] and result["decision_flips"] == 0 and result["p95_abs_z_shift"] < 1e-6


def test_synthetic_anomalies_change_only_the_current_frame_and_raise_the_score_with_their_strength() -> None:
    rng = np.random.default_rng(3)
    base = np.cumsum(rng.normal(0, 0.05, (TINY.image_size, TINY.image_size)), axis=1)
    clips = np.stack([np.clip(np.stack([base] * TINY.frames), -1, 1)] * 16).astype(np.float32)
    clips = clips.reshape(16, TINY.frames * TINY.channels, TINY.image_size, TINY.image_size)
    out = synthetic_anomalies(clips, TINY.channels)
    assert out.shape == clips.shape and out.dtype == np.float32
    assert np.array_equal(out, synthetic_anomalies(clips, TINY.channels))  # deterministic
    assert np.array_equal(out[:, : -TINY.channels], clips[:, : -TINY.channels])  # the past frames untouched
    change = np.abs(out - clips).reshape(16, -1).sum(axis=1)
    assert (change > 0).all() and change[-1] > change[0]  # graded: the last is the strongest


def test_with_the_shipped_weights_synthetic_anomalies_spread_the_scores_past_the_threshold(ped2_root: Path) -> None:
    """On the first clips of a Ped2 test video (what the service collects): the anomalous copies score
    higher the stronger they are, and a share of them crosses the weights' threshold."""
    from model.data import FrameSet, list_videos, split_folder
    from model.paths import DEFAULT_WEIGHTS
    from model.weights import load_weights

    loaded = load_weights(DEFAULT_WEIGHTS)
    cfg = loaded.config
    test_dir = split_folder(ped2_root, "testing")
    frames = FrameSet.load(test_dir, cfg, list_videos(test_dir)[:1])
    normal = frames.clips(frames.clip_index(cfg.frames)[:32], cfg.frames)
    scores = clip_scores(TorchBackend(loaded.model), np.concatenate([normal, synthetic_anomalies(normal, cfg.channels)]))
    z = loaded.calibration.normalize
    alarms = np.array([z(float(s)) >= loaded.calibration.threshold for s in scores])
    assert not alarms[:32].any() and 0.2 < alarms[32:].mean() < 0.95
    assert spearman(scores[32:], np.arange(32)) > 0.7  # graded strength -> graded score


def test_a_written_record_is_read_by_auto(tmp_path: Path) -> None:
    cal = Calibration(log_mean=-3.0, log_std=0.3)
    scores = np.linspace(0.01, 0.1, 20)
    entries = [
        {**check_entry({"backend": "torch", "precision": "fp32"}, scores, scores, cal, None, cal), "fps": 10.0},
        {**check_entry({"backend": "onnxruntime", "precision": "fp32"}, scores, scores, cal, None, cal),
         "fps": 20.0},
    ]
    record = new_record(weights="w.safetensors", digest="ab" * 32, device="cpu", threads=1, entries=entries,
                        parity_clips="20 clips", calibration_clips="20 clips", made_by="test")
    path = write_record(record, tmp_path / "backends" / "x-cpu.json")
    assert [p.name for p in path.parent.iterdir()] == ["x-cpu.json"]  # no temporary file left
    read = json.loads(path.read_text())
    assert read["format"] == RECORD_FORMAT and read["made_by"] == "test" and read["criteria"]["min_spearman"] == 0.98
    best, _ = choose(read, "cpu")
    assert best is not None and best["backend"] == "onnxruntime"


def test_the_offline_command_uses_the_same_definitions() -> None:
    import bench.calibrate_backends as offline
    from model.backends import parity as module

    assert offline.parity is module.parity and offline.spearman is module.spearman
    assert offline.PARITY_MIN_SPEARMAN is module.PARITY_MIN_SPEARMAN


# --- what an OpenVINO "bf16" backend really runs ----------------------------------------------------


def fake_compiled(layers: list[tuple[str, str]]) -> SimpleNamespace:
    class Value:
        def __init__(self, text: str) -> None:
            self.text = text

        def astype(self, _: type) -> str:
            return self.text

    ops = [SimpleNamespace(get_rt_info=lambda t=t, p=p: {"layerType": Value(t), "runtimePrecision": Value(p)})
           for t, p in layers]
    return SimpleNamespace(get_runtime_model=lambda: SimpleNamespace(get_ordered_ops=lambda: ops))


def test_runtime_precisions_count_compute_layers_only() -> None:
    pytest.importorskip("openvino")
    from model.backends.openvino_backend import runtime_precisions

    graph = [("Input", "f32"), ("Const", "f32"), ("Reorder", "f32"), ("Convolution", "bf16"),
             ("Convolution", "bf16"), ("Eltwise", "f32"), ("Output", "f32")]
    assert runtime_precisions(fake_compiled(graph)) == {"bf16": 2, "f32": 1}
    assert runtime_precisions(fake_compiled([("Convolution", "f32")])) == {"f32": 1}
    assert runtime_precisions(SimpleNamespace()) == {}  # no execution graph: nothing known


def test_openvino_bf16_is_labelled_by_what_its_layers_run(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from model.backends import make_backend

    torch.manual_seed(0)
    model = DESDnet(TINY).eval()
    bf16 = make_backend(model, "openvino", "bf16", cache_dir=tmp_path)
    fp32 = make_backend(model, "openvino", "fp32", cache_dir=tmp_path)
    assert fp32.effective_precision == "fp32"
    if cpu_has_bf16():  # this CPU runs bf16 kernels: the label says so (it said "fp32" before)
        assert bf16.effective_precision == "bf16" and bf16.runtime_precisions.get("bf16", 0) > 0
    else:  # only f32 layers: labelled fp32 (a CPU without bf16 instructions)
        assert bf16.effective_precision == "fp32" and set(bf16.runtime_precisions) <= {"f32"}
