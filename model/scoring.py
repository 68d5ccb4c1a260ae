"""Frame scores from a reconstruction (Algorithm A1 and the paper's secondary scores), and the causal
normalisation (z-score) and smoothing (trailing mean) of those scores.

The image functions take model-space images in [-1, 1]; the error is computed in [0, 1] pixel units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def error_map(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """E = Σ_c (Î − I) with pixels in [0, 1]. (B, C, H, W) x2 -> (B, H, W)."""
    return ((output - target) * 0.5).sum(dim=1)


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Every window start on the stride grid, plus one flush with the end if the grid misses it."""
    if not 1 <= size <= length or stride < 1:
        raise ValueError(f"a {size}-pixel window with stride {stride} does not fit in {length} pixels")
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _window_sums(x: torch.Tensor, dim: int, size: int, stride: int) -> torch.Tensor:
    """Sums of `x` over every `size`-long window along `dim` at the starts of `window_starts`.

    Separable and cheap: the covered span is cut into blocks of gcd(size, stride) pixels, each
    window is the sum of size/g consecutive blocks (a strided view, no copies), and the window
    flush with the end, if the grid misses it, is summed on its own.
    """
    length = x.shape[dim]
    count = (length - size) // stride + 1  # windows on the stride grid
    g = math.gcd(size, stride)
    covered = (count - 1) * stride + size
    blocks = x.narrow(dim, 0, covered).unflatten(dim, (covered // g, g)).sum(dim + 1)
    sums = blocks.unfold(dim, size // g, stride // g).sum(-1)
    if (count - 1) * stride != length - size:
        flush = x.narrow(dim, length - size, size).sum(dim, keepdim=True)
        sums = torch.cat([sums, flush], dim)
    return sums


def box_means(squared: torch.Tensor, size: int, stride: int) -> tuple[torch.Tensor, list[int], list[int]]:
    """Mean of `squared` (B, H, W) over every size×size window at the stride grid (+ last row/col).

    Returns (B, nY, nX) means and the window starts along y and x.
    """
    _, h, w = squared.shape
    ys, xs = window_starts(h, size, stride), window_starts(w, size, stride)
    # Half-precision maps are summed in float32; float32/float64 keep their own precision.
    x = squared if squared.dtype in (torch.float32, torch.float64) else squared.float()
    sums = _window_sums(_window_sums(x, 1, size, stride), 2, size, stride)
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
    return patch_score_squared(errors.square(), size, stride)


def patch_score_squared(squared: torch.Tensor, size: int = 16, stride: int = 4) -> PatchScore:
    """`patch_score` of an already squared error map E² (B, H, W), e.g. one with ignored pixels zeroed."""
    means, _, _ = box_means(squared, size, stride)
    b, ny, nx = means.shape
    _, h, w = squared.shape
    best, flat = means.reshape(b, ny * nx).max(dim=1)
    # Window i starts at i·stride, or flush with the end for the extra last one: min(i·stride, end).
    # Arithmetic rather than a lookup table: no host-to-device copy (CUDA graphs can capture it).
    y0 = torch.clamp((flat // nx) * stride, max=h - size)
    x0 = torch.clamp((flat % nx) * stride, max=w - size)
    return PatchScore(best, y0, x0)


def background_level(squared: torch.Tensor, size: int = 16, stride: int = 4) -> torch.Tensor:
    """The median over windows of mean(E²): how well the model reconstructs the scene as a whole.

    An anomaly raises a few windows and leaves this level alone; a scene the model never saw (another
    camera, another look) raises it everywhere, which is how the service tells the two apart.
    (B, H, W) E² -> (B,).
    """
    means, _, _ = box_means(squared, size, stride)
    return means.flatten(1).median(dim=1).values


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


# ---------------------------------------------------------------------------------------------
# Causal normalisation and smoothing: the one definition used by training (calibration),
# `vad evaluate` (causal protocol), the service's score stage and the backend parity check.

#: Frames in the causal trailing mean of the normalised score (fixed before any test measurement).
CAUSAL_WINDOW = 5
_EPS = 1e-12


def zscore(score, log_mean: float, log_std: float):  # float | np.ndarray -> same
    """Normalised score z = (log score − μ) / σ, with μ, σ the log-score statistics of normal frames.

    Works on a float or a numpy array (elementwise)."""
    import numpy as np

    if isinstance(score, np.ndarray):
        return (np.log(np.maximum(score, _EPS)) - log_mean) / max(log_std, _EPS)
    return (math.log(max(float(score), _EPS)) - log_mean) / max(log_std, _EPS)


def zscore_inverse(z: float, log_mean: float, log_std: float) -> float:
    """The raw score whose normalised value is `z` (inverse of `zscore`)."""
    return math.exp(log_mean + z * max(log_std, _EPS))


class TrailingMean:
    """Causal smoothing: the mean of the last `window` values added (fewer at the start)."""

    def __init__(self, window: int = CAUSAL_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"a trailing mean needs a window of at least 1, got {window}")
        self.window = window
        self._values: list[float] = []
        self._sum = 0.0

    def add(self, value: float) -> float:
        self._values.append(float(value))
        if len(self._values) > self.window:
            self._values.pop(0)
        # Summed afresh (window values): no drift from a running sum over a months-long stream.
        return math.fsum(self._values) / len(self._values)


def trailing_mean(values, window: int = CAUSAL_WINDOW):  # np.ndarray (N,) -> np.ndarray (N,) float64
    """`TrailingMean` over a whole series: element i is the mean of values[max(0, i-window+1) : i+1]."""
    import numpy as np

    smoother = TrailingMean(window)
    return np.fromiter((smoother.add(v) for v in np.asarray(values, dtype=np.float64)), np.float64, len(values))
