"""The backends behind `make_backend`: parity with PyTorch, int8, cache, errors, bench smoke."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from model import DESDnet, DESDnetConfig
from model.backends import Backend, MissingPackageError, TorchBackend, make_backend, score_clips
from model.backends.artefacts import weights_digest
from tests.unit.model.test_export import fixed_clips, realistic_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def model(tiny_config: DESDnetConfig) -> DESDnet:
    return realistic_model(tiny_config)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vad-cache")


@pytest.fixture(scope="module")
def clips(tiny_config: DESDnetConfig) -> torch.Tensor:
    return fixed_clips(tiny_config, 12, seed=3)


@pytest.fixture(scope="module")
def calibration(tiny_config: DESDnetConfig) -> torch.Tensor:
    return fixed_clips(tiny_config, 16, seed=4)


@pytest.fixture(scope="module")
def reference(model: DESDnet, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        image = model(clips, with_feature=False).image
    return image, score_clips(TorchBackend(realistic_model(model.config)), clips).score


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.double().numpy(), b.double().numpy())[0, 1])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_backends_match_torch(
    backend: str, model: DESDnet, cache: Path, clips: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor]
) -> None:
    recon = make_backend(model, backend, "fp32", cache_dir=cache)
    assert recon.name == f"{backend}-fp32" and recon.config == model.config
    for batch in (1, 3, 12):
        out = recon.reconstruct(clips[:batch])
        assert out.dtype == torch.float32 and out.shape == reference[0][:batch].shape
        assert float((out - reference[0][:batch]).abs().max()) < 1e-4
    assert torch.allclose(score_clips(recon, clips).score, reference[1], rtol=1e-3, atol=1e-7)


def test_every_backend_is_a_backend(model: DESDnet, cache: Path) -> None:
    built = [make_backend(model, "torch"), make_backend(model, "onnxruntime", "fp32", cache_dir=cache),
             make_backend(model, "openvino", "fp32", cache_dir=cache)]
    assert [b.name for b in built] == ["torch-fp32", "onnxruntime-fp32", "openvino-fp32"]
    assert all(isinstance(b, Backend) for b in built)
    assert [b.has_feature for b in built] == [True, False, False]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_scores_follow_fp32(
    backend: str,
    model: DESDnet,
    cache: Path,
    clips: torch.Tensor,
    calibration: torch.Tensor,
    reference: tuple[torch.Tensor, torch.Tensor],
) -> None:
    recon = make_backend(model, backend, "int8", cache_dir=cache, calibration_clips=lambda: calibration)
    assert recon.name == f"{backend}-int8" and not recon.cached
    out = recon.reconstruct(clips)
    assert out.shape == reference[0].shape
    assert float((out - reference[0]).abs().max()) < 0.15
    assert correlation(score_clips(recon, clips).score, reference[1]) > 0.95
    again = make_backend(model, backend, "int8", cache_dir=cache)  # cached: no calibration needed
    assert again.cached and again.artefact == recon.artefact
    assert torch.equal(again.reconstruct(clips[:2]), recon.reconstruct(clips[:2]))


def test_int8_calibrates_from_a_dataset(
    tiny_config: DESDnetConfig, synthetic_root: Path, tmp_path: Path
) -> None:
    recon = make_backend(
        realistic_model(tiny_config, seed=5), "onnxruntime", "int8",
        cache_dir=tmp_path, dataset=synthetic_root, calibration_size=8,
    )
    meta = json.loads((recon.artefact.parent / "meta.json").read_text())
    assert meta["calibration_clips"] == 8 and meta["calibration_source"] == str(synthetic_root)


def test_int8_without_calibration_data_is_refused(
    tiny_config: DESDnetConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="calibration clips"):
        make_backend(realistic_model(tiny_config, seed=6), "openvino", "int8", cache_dir=tmp_path)


def test_bf16_paths_stay_close(
    model: DESDnet, cache: Path, clips: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor]
) -> None:
    with pytest.warns(RuntimeWarning) if not _cpu_has_bf16() else nullcontext():
        ov = make_backend(model, "openvino", "bf16", cache_dir=cache)
    assert ov.effective_precision in ("bf16", "fp32")
    torch_bf16 = TorchBackend(realistic_model(model.config), precision="bf16")
    for recon in (ov, torch_bf16):
        out = recon.reconstruct(clips)
        assert out.dtype == torch.float32
        assert float((out - reference[0]).abs().max()) < 0.05
        assert correlation(score_clips(recon, clips).score, reference[1]) > 0.99


def test_cache_is_keyed_by_weights(tiny_config: DESDnetConfig, tmp_path: Path) -> None:
    a = make_backend(realistic_model(tiny_config, seed=7), "onnxruntime", "fp32", cache_dir=tmp_path)
    again = make_backend(realistic_model(tiny_config, seed=7), "onnxruntime", "fp32", cache_dir=tmp_path)
    other = make_backend(realistic_model(tiny_config, seed=8), "onnxruntime", "fp32", cache_dir=tmp_path)
    assert not a.cached and again.cached and again.artefact == a.artefact
    assert other.artefact != a.artefact


def test_mapping_encoder_does_not_change_the_key(tiny_config: DESDnetConfig) -> None:
    a, b = realistic_model(tiny_config, seed=9), realistic_model(tiny_config, seed=9)
    with torch.no_grad():
        b.mapping_encoder.stage1[0].weight.add_(1.0)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.decoder.head[0].weight.add_(1.0)
    assert weights_digest(a) != weights_digest(b)


def test_bad_names_are_explained(model: DESDnet) -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'tensorrt'.*onnxruntime.*openvino"):
        make_backend(model, "tensorrt", "fp32")
    with pytest.raises(ValueError, match=r"'onnxruntime' does not support precision 'bf16'.*fp32, int8"):
        make_backend(model, "onnxruntime", "bf16")
    with pytest.raises(ValueError, match="openvino.*does not support precision 'fp16'"):
        make_backend(model, "openvino", "fp16")


def test_missing_package_names_what_to_install(model: DESDnet, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    with pytest.raises(MissingPackageError, match="pip install nncf"):
        make_backend(model, "openvino", "int8")


def test_wrong_clip_shape_is_refused(model: DESDnet, cache: Path) -> None:
    recon = make_backend(model, "onnxruntime", "fp32", cache_dir=cache)
    with pytest.raises(ValueError, match="expected a clip batch of shape"):
        recon.reconstruct(torch.zeros(1, 3, 32, 32))
    assert recon.reconstruct(torch.zeros(0, 5, 32, 32)).shape == (0, 1, 32, 32)


def test_bench_smoke(tiny_config: DESDnetConfig, cache: Path, tmp_path: Path) -> None:
    from bench.model_bench import ModelBenchOptions
    from bench.report import write_report
    from bench.run import run_bench

    options = ModelBenchOptions(
        config=tiny_config, backends=("torch", "onnxruntime"), precisions=("fp32", "int8"),
        batch_sizes=(1, 2), seconds=0.0, warmup=0, min_runs=1, threads=1, cache_dir=cache, progress=False,
    )
    report = run_bench(options)
    json_path, md_path = write_report(report, tmp_path)
    rows = json.loads(json_path.read_text())["model_only"]
    assert {(r["backend"], r["precision"], r["batch"]) for r in rows} == {
        ("torch", "fp32", 1), ("torch", "fp32", 2),
        ("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2),
        ("onnxruntime", "int8", 1), ("onnxruntime", "int8", 2),
    }
    assert report["paper_pipeline"]["fps"] > 0 and all(r["x_paper_pipeline"] > 0 for r in rows)
    assert "| onnxruntime | int8 |" in md_path.read_text()


def _cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
