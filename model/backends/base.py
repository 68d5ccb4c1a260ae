"""The base class every inference backend implements, and the one scoring path built on it.

A `Backend` turns clips into reconstructions of their current frame; `score_clips` turns those into
frame scores and error maps (Algorithm A1). `vad evaluate`, the service and the benchmarks all score
through `score_clips`, whatever the backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..network import DESDnetConfig
from ..scoring import background_level, error_map, feature_distance, frame_mse, patch_score_squared


class Backend(ABC):
    """One way of running the reconstruction path of a DESDnet.

    config: the network's configuration; name: "<backend>-<precision>" (e.g. "openvino-int8");
    precision: what was asked for; effective_precision: what really runs (a CPU without bf16
    instructions runs openvino "bf16" in fp32); artefact: the exported file it runs (None for torch);
    cached: whether that file came from the artefact cache.
    """

    config: DESDnetConfig
    name: str
    precision: str
    effective_precision: str
    artefact: Path | None = None
    cached: bool = False
    #: Whether `reconstruct_with_feature` works (only the torch backend runs the mapping encoder).
    has_feature: bool = False

    @abstractmethod
    def reconstruct(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T*C, H, W) in [-1, 1] -> float32 (B, C, H, W) reconstruction of the current frame."""

    def reconstruct_with_feature(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T*C, H, W) -> (reconstruction (B, C, H, W), feature (B, D)) for the Deep SVDD distance."""
        raise NotImplementedError(f"{self.name} does not run the mapping encoder")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _as_input_array(self, clips: torch.Tensor | np.ndarray) -> np.ndarray:
        """Check the batch shape and return it as a contiguous float32 array (for exported graphs)."""
        cfg = self.config
        array = clips.detach().cpu().numpy() if isinstance(clips, torch.Tensor) else np.asarray(clips)
        expected = cfg.frames * cfg.channels
        if array.ndim != 4 or array.shape[1:] != (expected, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"expected a clip batch of shape (B, {expected}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(array.shape)}"
            )
        return np.ascontiguousarray(array, dtype=np.float32)

    def _empty_output(self) -> torch.Tensor:
        cfg = self.config
        return torch.empty(0, cfg.channels, cfg.image_size, cfg.image_size)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}{f' {self.artefact}' if self.artefact else ''}>"


@dataclass(frozen=True)
class ClipScores:
    """Scores of a batch of clips, all on the backend's device.

    score: (B,) patch score (Algorithm A1); y, x: (B,) top window in model pixels;
    mse: (B,) whole-frame MSE; errors: (B, H, W) squared error map E²;
    feature_distance: (B,) or None; background: (B,) `model.scoring.background_level` of E².
    """

    score: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    mse: torch.Tensor
    errors: torch.Tensor
    feature_distance: torch.Tensor | None = None
    background: torch.Tensor | None = None

    def cpu(self) -> ClipScores:
        return ClipScores(*(None if t is None else t.detach().cpu() for t in (
            self.score, self.y, self.x, self.mse, self.errors, self.feature_distance, self.background)))


def score_clips(backend: Backend, clips: torch.Tensor, center: torch.Tensor | None = None) -> ClipScores:
    """(B, T*C, H, W) -> ClipScores. With `center` (and a backend that has the feature) also the
    Deep SVDD feature distance."""
    cfg = backend.config
    if backend.device.type == "cuda":
        clips = clips.to(backend.device, non_blocking=True)  # uploaded once, for the model and the score
    distance = None
    if center is not None and backend.has_feature:
        image, feature = backend.reconstruct_with_feature(clips)
        distance = feature_distance(feature, center.to(feature.device))
    else:
        image = backend.reconstruct(clips)
    current = clips[:, -cfg.channels :].to(image.device)
    squared = error_map(image, current).square()
    top = patch_score_squared(squared, cfg.patch_size, cfg.patch_stride)
    background = background_level(squared, cfg.patch_size, cfg.patch_stride)
    return ClipScores(top.score, top.y, top.x, frame_mse(image, current), squared, distance, background)
