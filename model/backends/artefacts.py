"""Exported and quantised models, built once and cached on disk, and the clips int8 calibrates on.

Artefacts live under a cache folder (default ~/.cache/vad; the service passes its `cache_dir`
setting) in a folder keyed by a hash of the weights (reconstruction path), configuration, kind and
library versions, so a second start only loads files. Building is atomic: two processes building
the same artefact at once both succeed and one result is kept.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..export import DEFAULT_OPSET, export_onnx
from ..network import DESDnet, DESDnetConfig

CACHE_FORMAT = "vad-runtime-cache/1"
DEFAULT_CALIBRATION_SIZE = 64
PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
INT8_PACKAGES = {"onnxruntime": (), "openvino": ("nncf",)}

ClipSource = np.ndarray | torch.Tensor | Iterable[Any] | Callable[[], Any]


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "vad"


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


def needed_packages(backend: str, precision: str) -> tuple[str, ...]:
    return PACKAGES.get(backend, ()) + (INT8_PACKAGES.get(backend, ()) if precision == "int8" else ())


def library_versions(backend: str, precision: str) -> dict[str, str]:
    """Versions of the packages an artefact of `backend`/`precision` depends on ("absent" if missing)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", *needed_packages(backend, precision)):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def artefact_dir(cache_dir: Path, digest: str, kind: str, versions: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, digest, kind, versions], sort_keys=True).encode())
    return cache_dir / f"{kind}-{key.hexdigest()[:16]}"


def is_built(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def build_once(target: Path, build: Callable[[Path], dict[str, Any]], rebuild: bool = False) -> Path:
    """Make `target` (a folder) by calling build(tmp_folder) unless it exists; atomic on rename."""
    if is_built(target) and not rebuild:
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
            if not is_built(target):  # lost a race against a half-written folder?
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def onnx_folder(cache_dir: Path, digest: str) -> Path:
    return artefact_dir(cache_dir, digest, f"onnx-opset{DEFAULT_OPSET}", library_versions("onnx", "fp32"))


def cached_onnx(model: DESDnet, cache_dir: Path, digest: str | None = None, rebuild: bool = False) -> Path:
    """The fp32 dynamic-batch ONNX file of `model`, exported once per weights."""
    digest = digest or weights_digest(model)
    versions = library_versions("onnx", "fp32")

    def build(tmp: Path) -> dict[str, Any]:
        export_onnx(model, tmp / "model.onnx", opset=DEFAULT_OPSET, dynamic_batch=True)
        return {"config": json.loads(model.config.to_json()), "weights_sha256": digest, "versions": versions}

    return build_once(onnx_folder(cache_dir, digest), build, rebuild) / "model.onnx"


def cached_int8(
    model: DESDnet,
    backend: str,
    cache_dir: Path,
    filename: str,
    quantize: Callable[[Path, Path, list[np.ndarray]], None],
    calibration_clips: ClipSource | None,
    dataset: Path | str | None,
    calibration_size: int,
    rebuild: bool,
) -> tuple[Path, bool]:
    """(path, cached): the int8 artefact of `model` for `backend`, quantised once by
    quantize(fp32_onnx, output, clips). Calibration clips are only gathered when it must be built."""
    digest = weights_digest(model)
    versions = library_versions(backend, "int8")
    folder = artefact_dir(cache_dir, digest, f"{backend}-int8", versions)
    if is_built(folder) and not rebuild:
        return folder / filename, True
    # Fail before exporting anything when there is nothing to calibrate on.
    clips = calibration_clips_for(model.config, calibration_clips, dataset, calibration_size)
    fp32 = cached_onnx(model, cache_dir, digest, rebuild)

    def build(tmp: Path) -> dict[str, Any]:
        quantize(fp32, tmp / filename, clips)
        return {
            "config": json.loads(model.config.to_json()),
            "weights_sha256": digest,
            "versions": versions,
            "calibration_clips": len(clips),
            "calibration_source": "calibration_clips" if calibration_clips is not None else str(dataset),
        }

    return build_once(folder, build, rebuild) / filename, False


# ---------------------------------------------------------------------------------------------
# calibration clips


def _as_batches(source: Any) -> list[np.ndarray]:
    """Array (N, T*C, H, W), tensor, or iterable of those / of single clips -> list of (1, ...) arrays."""
    if callable(source):
        source = source()
    items: Iterable[Any] = [source] if isinstance(source, torch.Tensor | np.ndarray) else source
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
    """`count` normal clips spread evenly over the training videos of `dataset` (a dataset root
    holding training/, or a split folder itself). -> float32 (N, T*C, S, S)."""
    from ..data import FrameSet

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
        if dataset is None:
            raise ValueError(
                "int8 quantisation needs calibration clips of normal footage: pass calibration_clips "
                "(array (N, T*C, H, W) or a callable returning one) or dataset (a folder holding "
                "training/; the service's setting VAD_CALIBRATION_DATA)"
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
