"""Frame scores from a reconstruction (Algorithm A1 and the paper's secondary scores).

All functions take model-space images in [-1, 1]; the error is computed in [0, 1] pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def error_map(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """E = Σ_c (Î − I) with pixels in [0, 1]. (B, C, H, W) x2 -> (B, H, W)."""
    return ((output - target) * 0.5).sum(dim=1)


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Every window start on the stride grid, plus one flush with the end if the grid misses it."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def box_means(squared: torch.Tensor, size: int, stride: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """Mean of `squared` (B, H, W) over every size×size window at the stride grid (+ last row/col).

    Returns (B, nY, nX) means and the window starts along y and x.
    """
    _, h, w = squared.shape
    ys, xs = window_starts(h, size, stride), window_starts(w, size, stride)
    # Exact box sums from an integral image; cheaper than unfold and handles the flush windows.
    integral = F.pad(squared.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    y0 = torch.tensor(ys, device=squared.device)
    x0 = torch.tensor(xs, device=squared.device)
    y1, x1 = y0 + size, x0 + size
    sums = (
        integral[:, y1][:, :, x1]
        - integral[:, y0][:, :, x1]
        - integral[:, y1][:, :, x0]
        + integral[:, y0][:, :, x0]
    )
    return (sums / (size * size)).to(squared.dtype), ys, xs


@dataclass(frozen=True)
class PatchScore:
    """Per-frame patch scores and where the top window lies (model pixel coordinates)."""

    score: torch.Tensor  # (B,) max over windows of mean(E²)
    y: torch.Tensor  # (B,) top window's top row
    x: torch.Tensor  # (B,) top window's left column


def patch_score(errors: torch.Tensor, size: int = 16, stride: int = 4) -> PatchScore:
    """Algorithm A1: slide a size×size window with `stride` over E, take the max of mean(E²).

    errors: (B, H, W) signed error map from `error_map`.
    """
    means, ys, xs = box_means(errors.square(), size, stride)
    b, ny, nx = means.shape
    best, flat = means.reshape(b, ny * nx).max(dim=1)
    y0 = torch.tensor(ys, device=errors.device)[flat // nx]
    x0 = torch.tensor(xs, device=errors.device)[flat % nx]
    return PatchScore(best, y0, x0)


def patch_score_loop(errors: torch.Tensor, size: int = 16, stride: int = 4) -> torch.Tensor:
    """Reference: the published pipeline's Python double loop over windows. (B, H, W) -> (B,)."""
    _, h, w = errors.shape
    scores = []
    for frame in errors:
        best = float("-inf")
        for y in window_starts(h, size, stride):
            for x in window_starts(w, size, stride):
                best = max(best, float(frame[y : y + size, x : x + size].square().mean()))
        scores.append(best)
    return torch.tensor(scores, dtype=errors.dtype)


def frame_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whole-frame MSE in [0, 1] units. (B, C, H, W) x2 -> (B,)."""
    return ((output - target) * 0.5).square().mean(dim=(1, 2, 3))


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for [0, 1] pixels (higher = more normal). (B, C, H, W) x2 -> (B,)."""
    return -10.0 * torch.log10(frame_mse(output, target).clamp_min(1e-10))


def feature_distance(feature: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """‖φ(Î) − c‖². (B, D), (D,) -> (B,)."""
    return (feature - center).square().sum(dim=1)
