"""Reverse erasure: erase from the training inputs the pixels the model already reconstructs well."""

from __future__ import annotations

import torch


class ErasureMaskCollector:
    """Builds the universal (H, W) mask for the next epoch from the last batches of this one.

    A pixel stays (mask 1) if, in any of the last `window` batches, any sample's error there was
    above that batch's mean error; every other pixel is erased (mask 0).
    """

    def __init__(self, window: int, height: int, width: int) -> None:
        self.window = window
        self.recent: list[torch.Tensor] = []
        self.shape = (height, width)

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """output, target: (B, C, H, W). Keeps only the last `window` batch masks."""
        with torch.no_grad():
            error = (output - target).square().sum(dim=1)  # (B, H, W)
            above = (error > error.mean()).any(dim=0)  # (H, W)
        self.recent.append(above.cpu())
        # keep the last `window` masks; note recent[:-0] would delete nothing, hence max(.., 0)
        del self.recent[: max(len(self.recent) - self.window, 0)]

    def mask(self) -> torch.Tensor | None:
        """(H, W) float mask of 0/1, or None when no batch was seen."""
        if not self.recent:
            return None
        return torch.stack(self.recent).any(dim=0).float()


def apply_erasure(clip: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Multiply every frame of a clip (B, T*C, H, W) by the universal mask (H, W)."""
    return clip if mask is None else clip * mask
