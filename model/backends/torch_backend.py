"""The PyTorch backend: eager DESDnet. CPU: channels_last, optional bf16 autocast. CUDA: bf16/fp16
autocast, and the two encoders overlap on two CUDA streams."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch

from ..network import DESDnet
from .base import Backend
from .cpu import cpu_has_bf16

PRECISIONS = ("fp32", "bf16", "fp16")


class TorchBackend(Backend):
    has_feature = True

    def __init__(
        self, model: DESDnet, device: str | torch.device = "cpu", precision: str = "fp32", concurrent: bool = True
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"torch backend supports {', '.join(PRECISIONS)}, not {precision!r}")
        self._device = torch.device(device)
        self.precision = self.effective_precision = precision
        self.config = model.config
        self.model = model.eval().to(self._device).to(memory_format=torch.channels_last)
        self.name = f"torch-{precision}"
        # CUDA: the two encoders overlap on two streams (a batch-1 frame fills only part of a GPU).
        self.side_stream = (
            torch.cuda.Stream(self._device)
            if concurrent and self._device.type == "cuda" and model.config.use_prediction
            and model.config.use_reconstruction
            else None
        )
        if precision == "bf16" and self._device.type == "cpu" and not cpu_has_bf16():
            warnings.warn(
                "this CPU has no bf16 instructions: torch bf16 runs emulated and slower than fp32",
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def device(self) -> torch.device:
        return self._device

    def _autocast(self):  # type: ignore[no-untyped-def]
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self._device.type, dtype=dtype)

    @torch.inference_mode()
    def reconstruct(self, clips: torch.Tensor) -> torch.Tensor:
        clips = clips.to(self._device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            image = self.model(clips, with_feature=False, side_stream=self.side_stream).image
        return image.float()

    @torch.inference_mode()
    def reconstruct_with_feature(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clips = clips.to(self._device).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.model(clips, with_feature=True)
        assert out.feature is not None
        return out.image.float(), out.feature.float()
