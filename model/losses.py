"""Training losses: L = L_int + λ_rgb·L_rgb + λ_compact·L_compact (paper: λ_rgb 0.2, λ_compact 0.01)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def intensity_loss(output: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """L_int: MSE between the reconstruction and I_t. (B, C, H, W) x2 -> scalar."""
    return F.mse_loss(output, current)


def weighted_rgb_loss(output: torch.Tensor, previous: torch.Tensor, channels: int) -> torch.Tensor:
    """L_rgb = Σ_k k/16 · MSE(output, previous frame k), frame 1 = I_{t-4}, frame 4 = I_{t-1}.

    output: (B, C, H, W); previous: (B, (T-1)*C, H, W) oldest first. With T-1 = 4 the weights are
    1/16 .. 4/16; for other T they follow k / (T-1)² as well.
    """
    n = previous.shape[1] // channels
    total = output.new_zeros(())
    for k in range(1, n + 1):
        frame = previous[:, (k - 1) * channels : k * channels]
        total = total + (k / n**2) * F.mse_loss(output, frame)
    return total


def svdd_distances(feature: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Squared distances to the centre. (B, D), (D,) -> (B,)."""
    return (feature - center).square().sum(dim=1)


def svdd_soft_boundary_loss(
    feature: torch.Tensor, center: torch.Tensor, radius: float, nu: float = 0.1
) -> torch.Tensor:
    """Deep SVDD soft-boundary objective: R² + (1/ν)·mean(max(0, d − R²)). R is not a parameter
    here: it is re-estimated as the (1 − ν) quantile of the distances (see `svdd_radius`)."""
    r2 = radius**2
    d = svdd_distances(feature, center)
    return r2 + (1.0 / nu) * torch.clamp(d - r2, min=0).mean()


def svdd_radius(distances: torch.Tensor, nu: float = 0.1) -> float:
    """R such that R² is the (1 − ν) quantile of the squared distances."""
    return float(torch.quantile(distances.double(), 1.0 - nu).clamp_min(0).sqrt())
