"""`--backend auto`: torch fp32 without a backend record, else the fastest entry that passed parity."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from model.data import FrameSet, list_videos
from model.runtimes import weights_digest
from model.train import patch_scores_of
from model.weights import Calibration, load_weights
from service import backend_select
from service.backend_select import RECORD_FORMAT, calibrate_backends, choose, machine_fingerprint, record_path
from service.infer import load_runtime
from tests.support.serving import metric_value


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty artefact cache (and record folder) for this test only."""
    monkeypatch.setenv("VAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VAD_BACKEND_RECORD", raising=False)
    return tmp_path / "cache"


def entry(backend: str, precision: str, fps: float, passed: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "backend": backend, "precision": precision, "fps": fps, "fps_batch4": fps, "passed": passed,
        "error": None, "versions": backend_select._versions(backend, precision), **extra,
    }


def record(*entries: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"format": RECORD_FORMAT, "device": "cpu", "machine": machine_fingerprint(), "entries": list(entries),
            **changes}


def write_record(weights: Path, cache: Path, content: dict[str, Any]) -> Path:
    path = record_path(weights_digest(load_weights(weights).model), "cpu", cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def test_auto_without_record_is_torch_fp32_and_says_how_to_make_one(
    tiny_weights: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vad.backends")
    runtime = load_runtime(tiny_weights, "cpu", "auto", "fp32", None)
    assert (runtime.backend, runtime.precision, runtime.reconstructor.name) == ("torch", "fp32", "torch-fp32")
    assert "no backend record" in caplog.text and "vad calibrate-backends" in caplog.text


def test_auto_picks_the_fastest_passing_entry_never_a_failing_one(tiny_weights: Path, cache: Path) -> None:
    write_record(tiny_weights, cache, record(
        entry("torch", "fp32", 10.0),
        entry("onnxruntime", "fp32", 20.0),
        entry("openvino", "int8", 50.0, passed=False),  # fastest, but failed parity
        entry("onnxruntime", "int8", 99.0, error="RuntimeError: broke"),
    ))
    runtime = load_runtime(tiny_weights, "cpu", "auto", "fp32", None)
    assert (runtime.backend, runtime.precision) == ("onnxruntime", "fp32")
    assert runtime.reconstructor.name == "onnxruntime-fp32"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (record(entry("openvino", "int8", 50.0, passed=False)), "no entry passed"),
        (record(entry("openvino", "fp32", 50.0), machine={"cpu": "elsewhere"}), "another machine"),
        (record(entry("openvino", "fp32", 50.0), device="cuda"), "for device 'cuda'"),
        (record(entry("openvino", "fp32", 50.0, versions={"openvino": "0.0"})), "no entry passed"),
        (record(entry("openvino", "fp32", 50.0), format="other/1"), "unknown record format"),
    ],
)
def test_unusable_records_fall_back_to_torch_fp32(content: dict[str, Any], why: str) -> None:
    best, reason = choose(content, "cpu")
    assert best is None and why in reason


def test_a_faster_failing_entry_loses_to_torch_fp32() -> None:
    best, _ = choose(record(entry("torch", "fp32", 10.0), entry("openvino", "int8", 50.0, passed=False)), "cpu")
    assert best is not None and (best["backend"], best["precision"]) == ("torch", "fp32")


def test_serve_with_backend_auto_reports_the_chosen_backend(tiny_weights: Path, cache: Path, start_server) -> None:
    write_record(tiny_weights, cache, record(entry("torch", "fp32", 10.0), entry("onnxruntime", "fp32", 20.0)))
    server = start_server(backend="auto")
    text = httpx.get(server.url("/metrics"), timeout=10).text
    assert metric_value(text, "vad_model_info", {"backend": "onnxruntime", "precision": "fp32"}) == 1.0


def test_calibrate_backends_writes_the_record_auto_reads(tiny_weights: Path, synthetic_root: Path, cache: Path) -> None:
    content, path = calibrate_backends(
        tiny_weights, synthetic_root, backends=("torch", "onnxruntime"), precisions=("fp32",),
        seconds=0.02, clips=24, threads=1, progress=False,
    )
    assert path == record_path(content["weights_sha256"], "cpu") and path.is_file()
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
    assert backend_select.parity(reference * 1.01, reference, cal, labels)["failed"] == []
    assert any("spearman" in f for f in backend_select.parity(rng.permutation(reference), reference, cal, None)["failed"])
    assert any("alarm decision" in f for f in backend_select.parity(reference * 1.5, reference, cal, None)["failed"])


def test_a_backend_s_own_calibration_absorbs_a_uniform_bias_but_not_noise() -> None:
    """A quantised backend that scores every clip 1.5x higher keeps the ranking; calibrated on its own
    held-out scores, its z-scores match the reference's and it passes. Noise is not calibrated away."""
    rng = np.random.default_rng(1)
    held_out = torch.from_numpy(rng.uniform(0.01, 0.05, 180))
    reference = rng.uniform(0.01, 0.1, 200)
    ref_cal = Calibration.from_scores(held_out)
    biased_cal = Calibration.from_scores(held_out * 1.5)
    assert biased_cal.threshold == pytest.approx(ref_cal.threshold, abs=1e-3)
    result = backend_select.parity(reference * 1.5, reference, ref_cal, None, biased_cal)
    assert result["failed"] == [] and result["p95_abs_z_shift"] < 1e-6 and result["calibration"] == "own"
    assert result["decision_flips"] == 0 and result["alarm_rate"] == result["alarm_rate_reference"] > 0
    noisy = backend_select.parity(reference * rng.lognormal(0, 0.3, 200), reference, ref_cal, None, ref_cal)
    assert noisy["decision_flips"] > 0.02 and any("alarm decision" in f for f in noisy["failed"])


def test_a_runtime_uses_its_backend_s_calibration_from_the_record(
    tiny_weights: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = load_weights(tiny_weights)
    own = Calibration(count=9, log_mean=weights.calibration.log_mean + 0.7, log_std=0.25, threshold=4.25)
    path = write_record(tiny_weights, cache, record(
        entry("torch", "fp32", 10.0), entry("onnxruntime", "fp32", 20.0, calibration=asdict(own)),
    ))
    runtime = load_runtime(tiny_weights, "cpu", "onnxruntime", "fp32", None)
    assert runtime.calibration == own and runtime.threshold == 4.25 and str(path) in runtime.calibration_source
    assert load_runtime(tiny_weights, "cpu", "onnxruntime", "fp32", 2.5).threshold == 2.5  # explicit wins
    reference = load_runtime(tiny_weights, "cpu", "torch", "fp32", None)
    assert reference.calibration == weights.calibration and reference.calibration_source == "weights"
    path.unlink()
    caplog.set_level(logging.WARNING, logger="vad.infer")
    fallback = load_runtime(tiny_weights, "cpu", "onnxruntime", "fp32", None)
    assert fallback.calibration == weights.calibration and "vad calibrate-backends" in caplog.text
