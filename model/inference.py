"""Clip -> scores: the one scoring path shared by `vad evaluate`, the service and the benchmarks.

A `Reconstructor` turns clips into reconstructions (torch here; ONNX Runtime and OpenVINO in
`model.runtimes`); `score_clips` turns reconstructions into frame scores and error maps.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from .network import DESDnet, DESDnetConfig
from .scoring import error_map, feature_distance, frame_mse, patch_score


class Reconstructor(Protocol):
    config: DESDnetConfig
    name: str

    def reconstruct(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T*C, H, W) in [-1, 1] -> (B, C, H, W) reconstruction of the current frame."""
        ...


def cpu_has_bf16() -> bool:
    """AVX-512 bf16 or AMX: what makes bf16 faster than fp32 on a CPU (Linux flags)."""
    try:
        flags = open("/proc/cpuinfo").read()  # noqa: SIM115
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class TorchReconstructor:
    """PyTorch backend. CPU: channels_last, optional bf16 autocast. CUDA: bf16/fp16 autocast."""

    def __init__(
        self, model: DESDnet, device: str | torch.device = "cpu", precision: str = "fp32", concurrent: bool = True
    ) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"torch backend supports fp32, bf16 and fp16, not {precision!r}")
        self.device = torch.device(device)
        self.precision = precision
        self.config = model.config
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.name = f"torch-{precision}"
        # CUDA: the two encoders overlap on two streams (a batch-1 frame fills only part of a GPU).
        self.side_stream = (
            torch.cuda.Stream(self.device)
            if concurrent and self.device.type == "cuda" and model.config.use_prediction
            and model.config.use_reconstruction
            else None
        )
        if precision == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            warnings.warn(
                "this CPU has no bf16 instructions: torch bf16 runs emulated and slower than fp32",
                RuntimeWarning,
                stacklevel=2,
            )

    def _autocast(self):  # type: ignore[no-untyped-def]
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def reconstruct(self, clips: torch.Tensor) -> torch.Tensor:
        clips = clips.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            image = self.model(clips, with_feature=False, side_stream=self.side_stream).image
        return image.float()

    @torch.inference_mode()
    def reconstruct_with_feature(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clips = clips.to(self.device).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(clips, with_feature=True)
        assert out.feature is not None
        return out.image.float(), out.feature.float()


@dataclass(frozen=True)
class ClipScores:
    """Scores of a batch of clips, all on the reconstructor's device.

    score: (B,) patch score (Algorithm A1); y, x: (B,) top window in model pixels;
    mse: (B,) whole-frame MSE; errors: (B, H, W) squared error map E²;
    feature_distance: (B,) or None.
    """

    score: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    mse: torch.Tensor
    errors: torch.Tensor
    feature_distance: torch.Tensor | None = None


def score_clips(
    reconstructor: Reconstructor, clips: torch.Tensor, center: torch.Tensor | None = None
) -> ClipScores:
    """(B, T*C, H, W) -> ClipScores. With `center` (and a torch backend) also the feature distance."""
    cfg = reconstructor.config
    device = getattr(reconstructor, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        clips = clips.to(device, non_blocking=True)  # uploaded once, for the model and the score
    distance = None
    if center is not None and isinstance(reconstructor, TorchReconstructor):
        image, feature = reconstructor.reconstruct_with_feature(clips)
        distance = feature_distance(feature, center.to(feature.device))
    else:
        image = reconstructor.reconstruct(clips)
    current = clips[:, -cfg.channels :].to(image.device)
    errors = error_map(image, current)
    top = patch_score(errors, cfg.patch_size, cfg.patch_stride)
    return ClipScores(top.score, top.y, top.x, frame_mse(image, current), errors.square(), distance)


def make_reconstructor(
    model: DESDnet, backend: str = "torch", precision: str = "fp32", device: str = "cpu", **options: object
) -> Reconstructor:
    """Build a backend by name: torch here; onnxruntime and openvino live in `model.runtimes`.

    `options` go to `runtimes.make` (cache_dir, dataset or calibration_clips for int8, ...).
    """
    if backend == "torch":
        return TorchReconstructor(model, device, precision)
    from . import runtimes  # optional dependencies, imported only when asked for

    return runtimes.make(model, backend, precision, device, **options)  # type: ignore[arg-type]
