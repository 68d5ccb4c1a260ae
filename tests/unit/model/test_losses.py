from __future__ import annotations

import pytest
import torch

from model.losses import (
    intensity_loss,
    svdd_distances,
    svdd_radius,
    svdd_soft_boundary_loss,
    weighted_rgb_loss,
)


@pytest.mark.parametrize("channels", [1, 3])
def test_weighted_rgb_loss_weights_frame_k_by_k_over_16(channels: int) -> None:
    """Output all zeros, previous frame k constant v_k: MSE_k = v_k², so L = Σ k/16 · v_k²."""
    values = [0.1, -0.3, 0.5, 0.7]  # frame 1 = I_{t-4} (oldest) ... frame 4 = I_{t-1}
    previous = torch.cat([torch.full((2, channels, 8, 8), v) for v in values], dim=1)
    output = torch.zeros(2, channels, 8, 8)
    expected = sum(k / 16 * v * v for k, v in enumerate(values, start=1))
    assert weighted_rgb_loss(output, previous, channels).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_rgb_loss_gives_the_newest_frame_the_largest_weight() -> None:
    output = torch.zeros(1, 1, 4, 4)
    for k in range(1, 5):
        previous = torch.zeros(1, 4, 4, 4)
        previous[:, k - 1] = 1.0  # only frame k differs from the output, with MSE 1
        assert weighted_rgb_loss(output, previous, 1).item() == pytest.approx(k / 16)


def test_intensity_loss_is_the_mse() -> None:
    a, b = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    assert intensity_loss(a, b).item() == pytest.approx(0.25)


def test_svdd_soft_boundary_loss_by_hand() -> None:
    feature = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.5, 0.5]])
    center = torch.tensor([0.0, 0.0])
    radius, nu = 1.5, 0.25
    # d = 1, 4, 25, 0.5; R² = 2.25; hinge = 0, 1.75, 22.75, 0 -> mean 6.125
    torch.testing.assert_close(svdd_distances(feature, center), torch.tensor([1.0, 4.0, 25.0, 0.5]))
    expected = 2.25 + (1 / 0.25) * 6.125
    loss = svdd_soft_boundary_loss(feature, center, radius, nu)
    assert loss.item() == pytest.approx(expected)
    # Only the features outside the sphere get a gradient.
    feature.requires_grad_(True)
    svdd_soft_boundary_loss(feature, center, radius, nu).backward()
    assert feature.grad is not None
    assert torch.count_nonzero(feature.grad.abs().sum(dim=1)).item() == 2
    assert feature.grad[0].abs().sum() == 0 and feature.grad[3].abs().sum() == 0


def test_svdd_loss_with_zero_radius_is_the_mean_distance_over_nu() -> None:
    feature = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    center = torch.tensor([1.0, 0.0])
    assert svdd_soft_boundary_loss(feature, center, 0.0, 0.1).item() == pytest.approx((1 + 1) / 2 / 0.1)


def test_svdd_radius_is_the_root_of_the_distance_quantile() -> None:
    distances = torch.arange(101, dtype=torch.float32)  # 0..100: 90 % quantile is 90
    assert svdd_radius(distances, nu=0.1) == pytest.approx(90**0.5)
    assert svdd_radius(distances, nu=0.5) == pytest.approx(50**0.5)
    assert svdd_radius(distances[:1], nu=0.1) == 0.0
    assert isinstance(svdd_radius(distances), float)
    # A fraction ν of the samples lies outside the sphere.
    shuffled = distances[torch.randperm(101, generator=torch.Generator().manual_seed(0))]
    r = svdd_radius(shuffled, nu=0.2)
    assert (shuffled > r**2 + 1e-6).float().mean().item() == pytest.approx(0.2, abs=0.01)
