"""`--backend auto`: torch fp32 without a backend record, else the fastest entry that passed parity;
a backend's own calibration from the record. The record itself is written by bench/calibrate_backends.py
(tests/unit/bench/test_calibrate_backends.py)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from model.backends.artefacts import library_versions, weights_digest
from model.backends.record import RECORD_FORMAT, choose, machine_fingerprint, record_path
from model.weights import Calibration, load_weights
from service.runtime import load_runtime
from service.settings import ModelSettings
from tests.support.serving import metric_value


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty artefact cache (and record folder) for this test only; servers started by the test
    read it from the environment, as `vad serve` does."""
    monkeypatch.setenv("VAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VAD_BACKEND_RECORD", raising=False)
    return tmp_path / "cache"


def runtime_of(weights: Path, cache: Path, backend: str, precision: str = "fp32", threshold: float | None = None):
    return load_runtime(ModelSettings(weights=weights, device="cpu", backend=backend, precision=precision,
                                      threshold=threshold, cache_dir=cache))


def entry(backend: str, precision: str, fps: float, passed: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "backend": backend, "precision": precision, "fps": fps, "fps_batch4": fps, "passed": passed,
        "error": None, "versions": library_versions(backend, precision), **extra,
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
    runtime = runtime_of(tiny_weights, cache, "auto")
    assert (runtime.backend_name, runtime.precision, runtime.backend.name) == ("torch", "fp32", "torch-fp32")
    assert "no backend record" in caplog.text and "vad calibrate-backends" in caplog.text


def test_auto_picks_the_fastest_passing_entry_never_a_failing_one(tiny_weights: Path, cache: Path) -> None:
    write_record(tiny_weights, cache, record(
        entry("torch", "fp32", 10.0),
        entry("onnxruntime", "fp32", 20.0),
        entry("openvino", "int8", 50.0, passed=False),  # fastest, but failed parity
        entry("onnxruntime", "int8", 99.0, error="RuntimeError: broke"),
    ))
    runtime = runtime_of(tiny_weights, cache, "auto")
    assert (runtime.backend_name, runtime.precision) == ("onnxruntime", "fp32")
    assert runtime.backend.name == "onnxruntime-fp32"


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
    ready = httpx.get(server.url("/readyz"), timeout=10)
    assert ready.status_code == 200, ready.text
    assert (ready.json()["backend"], ready.json()["precision"]) == ("onnxruntime", "fp32")


def test_a_runtime_uses_its_backend_s_calibration_from_the_record(
    tiny_weights: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = load_weights(tiny_weights)
    own = Calibration(count=9, log_mean=weights.calibration.log_mean + 0.7, log_std=0.25, threshold=4.25)
    path = write_record(tiny_weights, cache, record(
        entry("torch", "fp32", 10.0), entry("onnxruntime", "fp32", 20.0, calibration=asdict(own)),
    ))
    runtime = runtime_of(tiny_weights, cache, "onnxruntime")
    assert runtime.calibration == own and runtime.threshold == 4.25 and str(path) in runtime.calibration_source
    assert runtime_of(tiny_weights, cache, "onnxruntime", threshold=2.5).threshold == 2.5  # explicit wins
    reference = runtime_of(tiny_weights, cache, "torch")
    assert reference.calibration == weights.calibration and reference.calibration_source == "weights"
    path.unlink()
    caplog.set_level(logging.WARNING, logger="vad.runtime")
    fallback = runtime_of(tiny_weights, cache, "onnxruntime")
    assert fallback.calibration == weights.calibration and "vad calibrate-backends" in caplog.text
