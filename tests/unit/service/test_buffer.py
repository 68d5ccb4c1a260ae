"""Buffer stage: FrameRing keeps a stream's last T resized frames and lays them out as the model's input."""

from __future__ import annotations

import numpy as np
import pytest

from model.data import resize_frame, to_model_range
from model.network import DESDnetConfig
from service.buffer import FrameRing
from tests.support.data import TINY

RGB = DESDnetConfig(channels=3, image_size=32, base_width=4, patch_size=4, patch_stride=2)
SIZE = (180, 120)  # (width, height) of the `video` fixture's frames


def resized(video: np.ndarray, config: DESDnetConfig) -> list[np.ndarray]:
    return [resize_frame(frame, config) for frame in video]


def test_a_new_ring_is_empty() -> None:
    ring = FrameRing(5)
    assert len(ring) == 0
    assert ring.frames == 5
    assert not ring.full
    assert ring.frame_size is None
    assert ring.epoch == 0


def test_the_ring_is_full_at_t_frames_and_keeps_only_the_last_t(video: np.ndarray) -> None:
    frames = resized(video, TINY)
    ring = FrameRing(TINY.frames)
    for i in range(TINY.frames - 1):
        ring.push(frames[i], SIZE)
        assert len(ring) == i + 1
        assert not ring.full
    ring.push(frames[TINY.frames - 1], SIZE)
    assert len(ring) == TINY.frames and ring.full
    for frame in frames[TINY.frames:TINY.frames + 3]:
        ring.push(frame, SIZE)
        assert len(ring) == TINY.frames and ring.full


@pytest.mark.parametrize("config", [TINY, RGB], ids=["gray", "rgb"])
def test_the_clip_is_the_last_t_frames_in_model_layout_oldest_first(
    video: np.ndarray, config: DESDnetConfig
) -> None:
    frames = resized(video, config)
    t, c, s = config.frames, config.channels, config.image_size
    ring = FrameRing(t)
    pushed = 7  # two more than T: the two oldest must have left the ring
    for frame in frames[:pushed]:
        ring.push(frame, SIZE)
    clip = ring.clip()

    assert clip.shape == (t * c, s, s)
    assert clip.dtype == np.float32
    assert clip.flags.c_contiguous
    assert clip.min() >= -1.0 and clip.max() <= 1.0
    kept = np.stack(frames[pushed - t:pushed])  # (T, S, S, C) uint8
    expected = to_model_range(kept).reshape(t * c, s, s)
    np.testing.assert_array_equal(clip, expected)
    # Oldest first: channel block k is frame (pushed - T + k), each channel of it in HWC -> CHW order.
    for k in range(t):
        for ch in range(c):
            frame = frames[pushed - t + k]
            np.testing.assert_array_equal(clip[k * c + ch], frame[:, :, ch].astype(np.float32) / 127.5 - 1.0)


def test_the_clip_maps_uint8_0_and_255_to_minus_one_and_one() -> None:
    ring = FrameRing(2)
    ring.push(np.zeros((4, 4, 1), np.uint8), (8, 8))
    ring.push(np.full((4, 4, 1), 255, np.uint8), (8, 8))
    clip = ring.clip()
    assert clip.shape == (2, 4, 4)
    assert np.all(clip[0] == -1.0)
    assert np.all(clip[1] == 1.0)


def test_the_clip_is_a_copy_not_a_view_of_the_pushed_frames(video: np.ndarray) -> None:
    frames = resized(video, TINY)
    ring = FrameRing(TINY.frames)
    for frame in frames[:TINY.frames]:
        ring.push(frame.copy(), SIZE)
    clip = ring.clip()
    before = clip.copy()
    ring.push(frames[TINY.frames], SIZE)  # the ring moves on while the clip waits for inference
    np.testing.assert_array_equal(clip, before)
    assert not np.array_equal(ring.clip(), before)


def test_push_records_the_latest_original_frame_size() -> None:
    ring = FrameRing(3)
    ring.push(np.zeros((4, 4, 1), np.uint8), (180, 120))
    assert ring.frame_size == (180, 120)
    ring.push(np.zeros((4, 4, 1), np.uint8), (640, 480))
    assert ring.frame_size == (640, 480)


def test_reset_empties_the_ring_clears_the_size_and_bumps_the_epoch(video: np.ndarray) -> None:
    frames = resized(video, TINY)
    ring = FrameRing(TINY.frames)
    for frame in frames[:TINY.frames]:
        ring.push(frame, SIZE)
    assert ring.full

    ring.reset()
    assert len(ring) == 0
    assert not ring.full
    assert ring.frame_size is None
    assert ring.epoch == 1
    ring.reset()
    assert ring.epoch == 2

    # Refilled after a reset, the clip holds only frames pushed since.
    fresh = frames[10:10 + TINY.frames]
    for frame in fresh[:-1]:
        ring.push(frame, (64, 48))
        assert not ring.full
    ring.push(fresh[-1], (64, 48))
    assert ring.full and ring.frame_size == (64, 48) and ring.epoch == 2
    expected = to_model_range(np.stack(fresh)).reshape(TINY.frames, TINY.image_size, TINY.image_size)
    np.testing.assert_array_equal(ring.clip(), expected)
