"""The loaded model: weights, the backend that runs them, and the calibration of the causal score.

`load_runtime(settings.model)` loads the weights, builds the backend (for backend "auto", the
fastest one that passed parity on this machine, see model/backends/record.py), runs one warm-up
batch so a broken backend fails at start-up rather than on the first frame, and picks the backend's
own calibration when the record has one. With backend "auto" and no usable record it serves with
torch fp32 and `ModelRuntime.auto` says so: the service then measures the other backends in the
background (service/autotune.py) and moves to the fastest with `with_backend`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from model.backends import Backend, make_backend, score_clips
from model.backends.record import REFERENCE, Choice, backend_calibration, resolve_auto
from model.network import DESDnet, DESDnetConfig
from model.weights import Calibration, LoadedWeights, load_weights

from .settings import ModelSettings

log = logging.getLogger("vad.runtime")


@dataclass(frozen=True)
class ModelRuntime:
    weights: LoadedWeights
    backend: Backend
    device: str
    backend_name: str  # torch, onnxruntime, openvino (what "auto" resolved to)
    precision: str
    threshold: float
    calibration: Calibration  # the causal z-score's statistics for this backend
    calibration_source: str  # "weights" or the backend record it came from
    auto: Choice | None = None  # backend "auto": what the record said (None for an explicit backend)

    @property
    def config(self) -> DESDnetConfig:
        return self.weights.config

    @property
    def unmeasured(self) -> bool:
        """Backend "auto" found no usable record: torch fp32 runs because nothing was measured."""
        return self.auto is not None and not self.auto.measured

    def with_backend(
        self, backend: Backend, backend_name: str, precision: str, calibration: Calibration, source: str,
        threshold: float | None = None,
    ) -> ModelRuntime:
        """The same weights on another backend, with that backend's calibration (`threshold`: an explicit
        threshold setting, which wins over the calibration's, as at start-up)."""
        return replace(self, backend=backend, backend_name=backend_name, precision=precision,
                       calibration=calibration, calibration_source=source,
                       threshold=float(calibration.threshold if threshold is None else threshold))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but torch sees no CUDA GPU")
    return device


def _build_auto(model: DESDnet, device: str, settings: ModelSettings) -> tuple[str, str, Backend, Choice]:
    """(backend, precision, Backend, Choice) for backend "auto"; torch fp32 when the choice fails to build."""
    choice = resolve_auto(model, device, settings.cache_dir, settings.backend_record)
    if (choice.backend, choice.precision) != REFERENCE:
        try:
            return choice.backend, choice.precision, make_backend(
                model, choice.backend, choice.precision, device, cache_dir=settings.cache_dir,
                dataset=settings.calibration_data,
            ), choice
        except (ImportError, ValueError, RuntimeError) as exc:
            log.warning("backend auto: %s/%s failed to build (%s); using torch fp32",
                        choice.backend, choice.precision, exc)
    return *REFERENCE, make_backend(model, *REFERENCE, device), choice


def load_runtime(settings: ModelSettings) -> ModelRuntime:
    """Raises WeightsError, ValueError, RuntimeError or ImportError (MissingPackageError)."""
    device = resolve_device(settings.device)
    weights = load_weights(settings.weights, device=device)
    auto: Choice | None = None
    if settings.backend == "auto":
        backend_name, precision, backend, auto = _build_auto(weights.model, device, settings)
    else:
        backend_name, precision = settings.backend, settings.precision
        backend = make_backend(weights.model, backend_name, precision, device, cache_dir=settings.cache_dir,
                               dataset=settings.calibration_data)
    cfg = weights.config
    score_clips(backend, torch.zeros(1, cfg.frames * cfg.channels, cfg.image_size, cfg.image_size))  # warm-up
    # A quantised backend's scores can carry a uniform bias: its own calibration (measured by
    # `vad calibrate-backends` on the same held-out videos) keeps the z-score and threshold honest.
    calibration, source = weights.calibration, "weights"
    if (backend_name, precision) != REFERENCE:
        own, why = backend_calibration(weights.model, backend_name, precision, device, settings.cache_dir,
                                       settings.backend_record)
        if own is not None:
            calibration, source = own, why
        else:
            log.warning("%s/%s: %s; the causal score uses the weights' fp32 calibration "
                        "(run `vad calibrate-backends` to measure this backend's)", backend_name, precision, why)
    threshold = calibration.threshold if settings.threshold is None else settings.threshold
    return ModelRuntime(weights, backend, device, backend_name, precision, float(threshold), calibration, source,
                        auto)
