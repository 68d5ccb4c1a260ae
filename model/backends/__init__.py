"""Inference backends behind one base class (`Backend`) and one factory (`make_backend`).

    backend = make_backend(model, "openvino", "int8", "cpu", dataset="/data/ped2")
    scores = score_clips(backend, clips)   # (B, T*C, S, S) -> ClipScores

Backends and precisions (`VALID`), one file each:
  torch        fp32, bf16, fp16   torch_backend.py
  onnxruntime  fp32, int8         onnxruntime_backend.py   int8: static QDQ, per-channel, MinMax
  openvino     fp32, bf16, int8   openvino_backend.py      bf16: precision hint; int8: NNCF

Only the reconstruction path is exported (no mapping encoder). Exported and quantised files are
cached (artefacts.py). int8 needs calibration clips of normal footage: `calibration_clips`, else
`dataset` (a folder holding training/), else a ValueError; a cached int8 artefact is reused whatever
the calibration source (rebuild=True redoes it). `record.py` holds the backend record that
`--backend auto` reads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..network import DESDnet
from . import onnxruntime_backend, openvino_backend, torch_backend
from .artefacts import (
    DEFAULT_CALIBRATION_SIZE,
    ClipSource,
    cached_int8,
    cached_onnx,
    default_cache_dir,
    is_built,
    needed_packages,
    onnx_folder,
    weights_digest,
)
from .base import Backend, ClipScores, score_clips
from .torch_backend import TorchBackend

VALID: dict[str, tuple[str, ...]] = {
    "torch": torch_backend.PRECISIONS,
    "onnxruntime": onnxruntime_backend.PRECISIONS,
    "openvino": openvino_backend.PRECISIONS,
}

__all__ = ["VALID", "Backend", "ClipScores", "MissingPackageError", "TorchBackend", "check_backend",
           "make_backend", "score_clips", "valid_combinations"]


class MissingPackageError(ImportError):
    """An optional package a backend needs is not installed; the message says what to install."""


def valid_combinations() -> str:
    return "; ".join(f"{b}: {', '.join(p)}" for b, p in VALID.items())


def check_backend(backend: str, precision: str) -> None:
    """ValueError naming the valid choices for an unknown backend or an unsupported precision."""
    if backend not in VALID:
        raise ValueError(
            f"unknown backend {backend!r}; choose one of {', '.join(VALID)} ({valid_combinations()})"
        )
    if precision not in VALID[backend]:
        raise ValueError(
            f"backend {backend!r} does not support precision {precision!r}; "
            f"it supports {', '.join(VALID[backend])} ({valid_combinations()})"
        )


def _require(backend: str, precision: str) -> None:
    missing = [name for name in needed_packages(backend, precision) if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingPackageError(
            f"backend {backend!r} ({precision}) needs the Python package(s) {', '.join(missing)}: "
            f"pip install {' '.join(missing)}  (or pip install -e '.[fast]')"
        )


def make_backend(
    model: DESDnet,
    backend: str = "torch",
    precision: str = "fp32",
    device: str = "cpu",
    *,
    cache_dir: Path | str | None = None,
    calibration_clips: ClipSource | None = None,
    dataset: Path | str | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    threads: int | None = None,
    rebuild: bool = False,
) -> Backend:
    """Build `backend`/`precision` on `device` for `model` (see the module docstring).

    cache_dir: artefact cache (default ~/.cache/vad). calibration_clips / dataset / calibration_size:
    int8 calibration data (normal clips). threads: intra-op threads (default torch.get_num_threads()).
    rebuild: export / quantise again even when a cached artefact exists.
    Raises ValueError (unknown backend or precision, no calibration data) or MissingPackageError.
    """
    check_backend(backend, precision)
    if backend == "torch":
        return TorchBackend(model, device, precision)
    _require(backend, precision)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    module = onnxruntime_backend if backend == "onnxruntime" else openvino_backend
    if precision == "int8":
        path, cached = cached_int8(model, backend, cache, module.INT8_FILE, module.quantize,
                                   calibration_clips, dataset, calibration_size, rebuild)
    else:
        digest = weights_digest(model)
        cached = is_built(onnx_folder(cache, digest)) and not rebuild
        path = cached_onnx(model, cache, digest, rebuild)
    if backend == "onnxruntime":
        return onnxruntime_backend.OnnxRuntimeBackend(model.config, path, precision, device, threads, cached)
    return openvino_backend.OpenVinoBackend(
        model.config, path, precision, device, threads, cached, compile_cache=cache / "openvino-compiled"
    )
