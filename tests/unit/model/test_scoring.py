from __future__ import annotations

import math

import pytest
import torch

from model.scoring import (
    error_map,
    feature_distance,
    frame_mse,
    patch_score,
    patch_score_loop,
    psnr,
    window_starts,
)


def reference_windows(length: int, size: int, stride: int) -> list[int]:
    """Written out independently of the module: the grid, plus the window flush with the end."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def reference_top(frame: torch.Tensor, size: int, stride: int) -> tuple[float, int, int]:
    """Naive loop in float64; ties go to the first window in row-major order."""
    h, w = frame.shape
    best, at = -math.inf, (0, 0)
    f = frame.double()
    for y in reference_windows(h, size, stride):
        for x in reference_windows(w, size, stride):
            value = float(f[y : y + size, x : x + size].square().mean())
            if value > best:
                best, at = value, (y, x)
    return best, at[0], at[1]


# (batch, height, width, size, stride): square, misaligned grid in y and x (37x53 with 16/4),
# size not a multiple of stride, stride == size, one window, 1x1 windows.
SHAPES = [
    (3, 37, 53, 16, 4),
    (2, 32, 32, 4, 2),
    (2, 37, 53, 5, 3),
    (2, 40, 41, 7, 7),
    (1, 16, 16, 16, 4),
    (2, 13, 9, 1, 1),
    (4, 64, 48, 8, 3),
]


@pytest.mark.parametrize(("b", "h", "w", "size", "stride"), SHAPES)
def test_patch_score_equals_loop(b: int, h: int, w: int, size: int, stride: int) -> None:
    gen = torch.Generator().manual_seed(h * 1000 + w + size)
    errors = torch.randn(b, h, w, generator=gen)
    fast = patch_score(errors, size, stride)
    loop = patch_score_loop(errors, size, stride)
    assert fast.score.shape == (b,) and fast.score.dtype == errors.dtype
    torch.testing.assert_close(fast.score, loop, rtol=1e-5, atol=1e-7)
    for i in range(b):
        best, y, x = reference_top(errors[i], size, stride)
        assert fast.score[i].item() == pytest.approx(best, rel=1e-5)
        assert (int(fast.y[i]), int(fast.x[i])) == (y, x)


def test_window_starts_include_the_flush_window() -> None:
    assert window_starts(37, 16, 4) == [0, 4, 8, 12, 16, 20, 21]
    assert window_starts(53, 16, 4) == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 37]
    assert window_starts(256, 16, 4) == list(range(0, 241, 4))  # grid ends flush: nothing added
    assert window_starts(16, 16, 4) == [0]
    with pytest.raises(ValueError, match="does not fit"):
        window_starts(8, 16, 4)


def test_hot_spot_only_in_the_flush_column_and_row_is_found() -> None:
    """A hot spot that no grid window fully covers: only the flush windows see all of it."""
    errors = torch.zeros(2, 37, 53)
    errors[0, 36, 52] = 4.0  # bottom-right pixel: grid windows end at row 35 / column 51
    errors[1, 0, 52] = 4.0  # top-right pixel
    top = patch_score(errors, 16, 4)
    torch.testing.assert_close(top.score, torch.full((2,), 16.0 / 256))
    assert top.y.tolist() == [21, 0] and top.x.tolist() == [37, 37]
    torch.testing.assert_close(patch_score_loop(errors, 16, 4), top.score)


def test_patch_score_of_a_constant_map_is_the_square() -> None:
    errors = torch.full((1, 32, 32), -0.5)
    assert patch_score(errors, 8, 2).score.item() == pytest.approx(0.25)


def test_patch_score_keeps_double_precision() -> None:
    errors = torch.randn(2, 37, 53, dtype=torch.float64)
    fast = patch_score(errors, 16, 4).score
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, patch_score_loop(errors, 16, 4), rtol=1e-12, atol=0)


def test_error_map_is_the_signed_channel_sum_in_unit_pixels() -> None:
    target = torch.full((2, 3, 4, 4), -1.0)  # black
    output = target.clone()
    output[:, 0] = 1.0  # one channel fully white: +1 in [0, 1] units
    output[:, 1] = -0.5  # +0.25
    output[1, 2] = -1.5  # -0.25 in sample 1 only
    e = error_map(output, target)
    assert e.shape == (2, 4, 4)
    torch.testing.assert_close(e[0], torch.full((4, 4), 1.25))
    torch.testing.assert_close(e[1], torch.full((4, 4), 1.0))


def test_frame_mse_and_psnr() -> None:
    target = torch.zeros(3, 1, 8, 8)
    output = target.clone()
    output[1] += 0.2  # 0.1 in [0, 1] units: MSE 0.01, PSNR 20 dB
    output[2] += 2.0  # 1.0: MSE 1, PSNR 0 dB
    torch.testing.assert_close(frame_mse(output, target), torch.tensor([0.0, 0.01, 1.0]))
    db = psnr(output, target)
    assert db[0].item() == pytest.approx(100.0)  # identical frames: clamped at MSE 1e-10
    assert db[1].item() == pytest.approx(20.0, abs=1e-4)
    assert db[2].item() == pytest.approx(0.0, abs=1e-6)
    assert db[0] > db[1] > db[2]  # higher = more normal


def test_feature_distance_is_the_squared_euclidean_distance() -> None:
    feature = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    center = torch.tensor([1.0, 0.0, -1.0])
    torch.testing.assert_close(feature_distance(feature, center), torch.tensor([20.0, 2.0]))
