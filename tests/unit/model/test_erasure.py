from __future__ import annotations

import torch

from model.erasure import ErasureMaskCollector, apply_erasure


def batch_with_errors(errors: list[dict[tuple[int, int], float]], size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, target) whose squared error, summed over 2 channels, is errors[b][(y, x)]."""
    output = torch.zeros(len(errors), 2, size, size)
    target = torch.zeros_like(output)
    for b, pixels in enumerate(errors):
        for (y, x), e in pixels.items():
            output[b, 0, y, x] = (e / 2) ** 0.5
            output[b, 1, y, x] = -((e / 2) ** 0.5)
    return output, target


def mask_of(pixels: set[tuple[int, int]], size: int = 4) -> torch.Tensor:
    m = torch.zeros(size, size)
    for y, x in pixels:
        m[y, x] = 1.0
    return m


def test_no_mask_before_any_batch() -> None:
    assert ErasureMaskCollector(3, 4, 4).mask() is None


def test_pixels_above_the_batch_mean_in_any_sample_are_kept() -> None:
    collector = ErasureMaskCollector(2, 4, 4)
    # Batch mean = (10 + 1 + 0.3) / 32 = 0.353: (0,0) of sample 0 and (1,1) of sample 1 are above,
    # (2,2) (error 0.3, below the mean) is erased like every error-free pixel.
    collector.add(*batch_with_errors([{(0, 0): 10.0}, {(1, 1): 1.0, (2, 2): 0.3}]))
    mask = collector.mask()
    assert mask is not None and mask.dtype == torch.float32 and mask.shape == (4, 4)
    assert torch.equal(mask, mask_of({(0, 0), (1, 1)}))


def test_mask_is_the_or_over_the_last_window_batches() -> None:
    collector = ErasureMaskCollector(2, 4, 4)
    for pixel in [(0, 0), (1, 1), (2, 2)]:
        collector.add(*batch_with_errors([{pixel: 5.0}, {}]))
    # Window 2: the batch that flagged (0, 0) has left.
    assert torch.equal(collector.mask(), mask_of({(1, 1), (2, 2)}))
    collector.add(*batch_with_errors([{(3, 3): 5.0}]))
    assert torch.equal(collector.mask(), mask_of({(2, 2), (3, 3)}))


def test_window_zero_keeps_no_batch() -> None:
    collector = ErasureMaskCollector(0, 4, 4)
    collector.add(*batch_with_errors([{(0, 0): 5.0}]))
    assert collector.mask() is None


def test_apply_erasure_multiplies_every_frame() -> None:
    gen = torch.Generator().manual_seed(0)
    clip = torch.rand(2, 5 * 3, 8, 8, generator=gen) * 2 - 1
    mask = (torch.rand(8, 8, generator=gen) > 0.5).float()
    erased = apply_erasure(clip, mask)
    assert erased.shape == clip.shape
    for channel in range(clip.shape[1]):
        assert torch.equal(erased[:, channel], clip[:, channel] * mask)
    assert torch.all(erased[:, :, mask == 0] == 0)
    assert apply_erasure(clip, None) is clip
