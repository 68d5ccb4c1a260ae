"""Fast inference backends behind the `Reconstructor` protocol: ONNX Runtime and OpenVINO.

    make(model, "openvino", "int8", "cpu", dataset="/data/ped2")  # -> Reconstructor

Backends and precisions (`VALID`):
  torch        fp32, bf16, fp16   (model.inference.TorchReconstructor, listed here for messages)
  onnxruntime  fp32, int8         int8: static QDQ, per-channel weights, MinMax calibration
  openvino     fp32, bf16, int8   bf16: INFERENCE_PRECISION_HINT; int8: NNCF post-training quantisation

Only the reconstruction path is exported (no mapping encoder). Exported and quantised artefacts
are cached under `cache_dir` (default $VAD_CACHE_DIR or ~/.cache/vad) in a folder keyed by a hash
of the weights (reconstruction path), configuration, backend, precision and library versions,
so a second start only loads files. int8 needs calibration clips of normal footage, from
`calibration_clips`, else from `dataset` (or $VAD_CALIBRATION_DATA), else a ValueError; a cached
int8 artefact is reused whatever the calibration source (pass rebuild=True to redo it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, export_onnx
from .network import DESDnet, DESDnetConfig

VALID: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
INT8_PACKAGES = {"onnxruntime": (), "openvino": ("nncf",)}
CACHE_FORMAT = "vad-runtime-cache/1"
DEFAULT_CALIBRATION_SIZE = 64

ClipSource = np.ndarray | torch.Tensor | Iterable[Any] | Callable[[], Any]


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
    import importlib.util

    needed = PACKAGES.get(backend, ()) + (INT8_PACKAGES.get(backend, ()) if precision == "int8" else ())
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingPackageError(
            f"backend {backend!r} ({precision}) needs the Python package(s) {', '.join(missing)}: "
            f"pip install {' '.join(missing)}  (or pip install -e '.[fast]')"
        )


# ---------------------------------------------------------------------------------------------
# cache


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAD_CACHE_DIR") or Path.home() / ".cache" / "vad")


def weights_digest(model: DESDnet) -> str:
    """sha256 of the configuration and every tensor the exported graph depends on."""
    digest = hashlib.sha256(model.config.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("mapping_encoder."):
            continue  # not part of the exported reconstruction path
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _library_versions(backend: str, precision: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch",) + PACKAGES.get(backend, ()) + (INT8_PACKAGES.get(backend, ()) if precision == "int8" else ())
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def artefact_dir(cache_dir: Path, digest: str, kind: str, versions: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, digest, kind, versions], sort_keys=True).encode())
    return cache_dir / f"{kind}-{key.hexdigest()[:16]}"


def _is_built(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def _build_once(target: Path, build: Callable[[Path], dict[str, Any]], rebuild: bool = False) -> Path:
    """Make `target` (a folder) by calling build(tmp_folder) unless it exists; atomic on rename.

    Two processes building the same artefact at once both succeed; one result is kept.
    """
    if _is_built(target) and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        began = time.perf_counter()
        meta = build(tmp)
        meta.update(format=CACHE_FORMAT, build_seconds=round(time.perf_counter() - began, 2))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        if target.exists() and rebuild:
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not _is_built(target):  # lost a race against a half-written folder?
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def onnx_folder(cache_dir: Path, digest: str) -> Path:
    return artefact_dir(cache_dir, digest, f"onnx-opset{DEFAULT_OPSET}", _library_versions("onnx", "fp32"))


def cached_onnx(model: DESDnet, cache_dir: Path, digest: str | None = None, rebuild: bool = False) -> Path:
    """The fp32 dynamic-batch ONNX file of `model`, exported once per weights."""
    digest = digest or weights_digest(model)
    versions = _library_versions("onnx", "fp32")
    folder = onnx_folder(cache_dir, digest)

    def build(tmp: Path) -> dict[str, Any]:
        export_onnx(model, tmp / "model.onnx", opset=DEFAULT_OPSET, dynamic_batch=True)
        return {"config": json.loads(model.config.to_json()), "weights_sha256": digest, "versions": versions}

    return _build_once(folder, build, rebuild) / "model.onnx"


# ---------------------------------------------------------------------------------------------
# calibration clips


def _as_batches(source: Any) -> list[np.ndarray]:
    """Array (N, T*C, H, W), tensor, or iterable of those / of single clips -> list of (1, ...) arrays."""
    if callable(source):
        source = source()
    if isinstance(source, torch.Tensor | np.ndarray):
        items: Iterable[Any] = [source]
    else:
        items = source
    clips: list[np.ndarray] = []
    for item in items:
        array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        array = array.astype(np.float32, copy=False)
        if array.ndim == 3:
            array = array[None]
        clips.extend(np.ascontiguousarray(a[None]) for a in array)
    return clips


def calibration_from_dataset(
    dataset: Path | str, config: DESDnetConfig, count: int = DEFAULT_CALIBRATION_SIZE
) -> np.ndarray:
    """`count` normal clips spread evenly over the training videos of `dataset`.

    `dataset` is a dataset root holding training/ or a split folder itself.
    """
    from .data import FrameSet

    root = Path(dataset)
    split = root / "training" if (root / "training").is_dir() else root
    frames = FrameSet.load(split, config)
    index = frames.clip_index(config.frames)
    picks = np.unique(np.linspace(0, len(index) - 1, min(count, len(index))).round().astype(np.int64))
    return frames.clips(index[picks], config.frames)


def calibration_clips_for(
    config: DESDnetConfig,
    calibration_clips: ClipSource | None,
    dataset: Path | str | None,
    count: int = DEFAULT_CALIBRATION_SIZE,
) -> list[np.ndarray]:
    if calibration_clips is not None:
        clips = _as_batches(calibration_clips)[:count]
        source = "calibration_clips"
    else:
        dataset = dataset or os.environ.get("VAD_CALIBRATION_DATA") or None
        if dataset is None:
            raise ValueError(
                "int8 quantisation needs calibration clips of normal footage: pass calibration_clips "
                "(array (N, T*C, H, W) or a callable returning one) or dataset (a folder holding "
                "training/), or set VAD_CALIBRATION_DATA"
            )
        clips = _as_batches(calibration_from_dataset(dataset, config, count))
        source = str(dataset)
    expected = (1, config.frames * config.channels, config.image_size, config.image_size)
    if not clips:
        raise ValueError(f"no calibration clips found in {source}")
    bad = [c.shape for c in clips if c.shape != expected]
    if bad:
        raise ValueError(f"calibration clips must have shape (N, {', '.join(map(str, expected[1:]))}), got {bad[0]}")
    return clips


# ---------------------------------------------------------------------------------------------
# reconstructors


class _ArrayReconstructor:
    """Shared input checks and tensor <-> array conversion."""

    config: DESDnetConfig
    name: str
    artefact: Path
    cached: bool

    def _check(self, clips: torch.Tensor | np.ndarray) -> np.ndarray:
        cfg = self.config
        array = clips.detach().cpu().numpy() if isinstance(clips, torch.Tensor) else np.asarray(clips)
        expected = cfg.frames * cfg.channels
        if array.ndim != 4 or array.shape[1:] != (expected, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"expected a clip batch of shape (B, {expected}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(array.shape)}"
            )
        return np.ascontiguousarray(array, dtype=np.float32)

    def _empty(self) -> torch.Tensor:
        cfg = self.config
        return torch.empty(0, cfg.channels, cfg.image_size, cfg.image_size)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.artefact}>"


class OnnxRuntimeReconstructor(_ArrayReconstructor):
    def __init__(
        self, config: DESDnetConfig, path: Path, precision: str, device: str = "cpu",
        threads: int | None = None, cached: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.config, self.artefact, self.precision, self.cached = config, path, precision, cached
        self.name = f"onnxruntime-{precision}"
        self.effective_precision = precision
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise ValueError(
                    f"device {device!r}: this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(available)}); install onnxruntime-gpu or use device='cpu'"
                )
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            raise ValueError(f"onnxruntime backend: unknown device {device!r}; use 'cpu' or 'cuda[:N]'")
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def reconstruct(self, clips: torch.Tensor) -> torch.Tensor:
        array = self._check(clips)
        if not len(array):
            return self._empty()
        (image,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(image)


class OpenVinoReconstructor(_ArrayReconstructor):
    def __init__(
        self, config: DESDnetConfig, path: Path, precision: str, device: str = "cpu",
        threads: int | None = None, cached: bool = False, compile_cache: Path | None = None,
    ) -> None:
        import openvino as ov

        self.config, self.artefact, self.precision, self.cached = config, path, precision, cached
        self.name = f"openvino-{precision}"
        core = ov.Core()
        target = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}.get(device.lower(), device.upper())
        if target != "AUTO" and target.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            raise ValueError(
                f"openvino backend: device {device!r} is not available "
                f"(available: {', '.join(core.available_devices)})"
            )
        properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if target == "CPU":
            properties["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bf16" else "f32"
            properties["INFERENCE_NUM_THREADS"] = threads or torch.get_num_threads()
        elif precision == "bf16":
            properties["INFERENCE_PRECISION_HINT"] = "bf16"
        if compile_cache is not None:
            core.set_property({"CACHE_DIR": str(compile_cache)})
        self.compiled = core.compile_model(core.read_model(str(path)), target, properties)
        # What the plugin really runs: a CPU without bf16 instructions silently keeps f32.
        self.effective_precision = precision
        if precision == "bf16":
            hint = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
            if "bf16" not in hint:
                self.effective_precision = "fp32"
                warnings.warn(
                    f"openvino: {target} has no bf16 support (inference precision {hint}); "
                    "the 'bf16' backend runs in fp32 here",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()

    def reconstruct(self, clips: torch.Tensor) -> torch.Tensor:
        array = self._check(clips)
        if not len(array):
            return self._empty()
        with self.lock:  # one infer request: serialise callers from several threads
            self.request.infer({0: array})
            image = self.request.get_output_tensor(0).data.copy()
        return torch.from_numpy(image)


# ---------------------------------------------------------------------------------------------
# int8 builders


def _quantize_onnxruntime(fp32: Path, out: Path, clips: list[np.ndarray]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(clips)

        def get_next(self) -> dict[str, np.ndarray] | None:
            clip = next(self.items, None)
            return None if clip is None else {INPUT_NAME: clip}

        def rewind(self) -> None:
            self.items = iter(clips)

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)


def _quantize_openvino(fp32: Path, out: Path, clips: list[np.ndarray]) -> None:
    import logging

    import nncf
    import openvino as ov

    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)  # NNCF prints progress bars and INFO lines otherwise
    try:
        model = ov.Core().read_model(str(fp32))
        quantized = nncf.quantize(
            model,
            nncf.Dataset(clips),
            subset_size=len(clips),
            preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations: tanh/concat ranges
        )
    finally:
        nncf_logger.setLevel(level)
    ov.save_model(quantized, str(out), compress_to_fp16=False)


# ---------------------------------------------------------------------------------------------
# entry point


def make(
    model: DESDnet,
    backend: str,
    precision: str = "fp32",
    device: str = "cpu",
    *,
    cache_dir: Path | str | None = None,
    calibration_clips: ClipSource | None = None,
    dataset: Path | str | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    threads: int | None = None,
    rebuild: bool = False,
) -> Any:
    """Build a `Reconstructor` for `backend`/`precision` on `device` (see the module docstring).

    cache_dir: artefact cache (default $VAD_CACHE_DIR or ~/.cache/vad).
    calibration_clips / dataset / calibration_size: int8 calibration data (normal clips).
    threads: intra-op threads (default torch.get_num_threads()).
    rebuild: export / quantise again even when a cached artefact exists.
    The returned object has .config, .name, .reconstruct(clips) -> float32 (B, C, H, W), plus
    .artefact (the file it runs) and .cached (whether that file came from the cache).
    """
    check_backend(backend, precision)
    if backend == "torch":
        from .inference import TorchReconstructor

        return TorchReconstructor(model, device, precision)
    _require(backend, precision)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = weights_digest(model)
    cached = _is_built(onnx_folder(cache, digest)) and not rebuild
    clips: list[np.ndarray] = []
    if precision == "int8":
        versions = _library_versions(backend, precision)
        folder = artefact_dir(cache, digest, f"{backend}-int8", versions)
        name = "model.int8.onnx" if backend == "onnxruntime" else "model.int8.xml"
        cached = _is_built(folder) and not rebuild
        if not cached:  # fail before exporting anything when there is nothing to calibrate on
            clips = calibration_clips_for(model.config, calibration_clips, dataset, calibration_size)
    fp32 = cached_onnx(model, cache, digest, rebuild)
    path = fp32

    if precision == "int8":

        def build(tmp: Path) -> dict[str, Any]:
            quantize = _quantize_onnxruntime if backend == "onnxruntime" else _quantize_openvino
            quantize(fp32, tmp / name, clips)
            return {
                "config": json.loads(model.config.to_json()),
                "weights_sha256": digest,
                "versions": versions,
                "calibration_clips": len(clips),
                "calibration_source": "calibration_clips" if calibration_clips is not None
                else str(dataset or os.environ.get("VAD_CALIBRATION_DATA")),
            }

        path = _build_once(folder, build, rebuild) / name

    if backend == "onnxruntime":
        return OnnxRuntimeReconstructor(model.config, path, precision, device, threads, cached)
    return OpenVinoReconstructor(
        model.config, path, precision, device, threads, cached, compile_cache=cache / "openvino-compiled"
    )
