"""Heatmap rendering: E² map -> PNG at the original frame size, colour scale, overlay on the frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.heatmap import reference_level, render_heatmap

S = 32  # the tiny model's pixel size: errors maps are (S, S)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# COLORMAP_JET in BGR at a few levels (level * 255, truncated to uint8).
JET_0 = (128, 0, 0)  # level 0: dark blue
JET_127 = (130, 255, 126)  # level 0.5
JET_255 = (0, 0, 128)  # level 1: dark red


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == PNG_SIGNATURE
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def uniform(value: float, size: int = S) -> np.ndarray:
    return np.full((size, size), value, np.float32)


def assert_all(image: np.ndarray, bgr: tuple[int, int, int]) -> None:
    seen = np.unique(image.reshape(-1, 3), axis=0).tolist()
    assert np.all(image == np.array(bgr, np.uint8)), f"expected every pixel {bgr}, got {seen}"


@pytest.mark.parametrize("frame_size", [(180, 120), (120, 180), (S, S), (640, 480), (1, 1)])
def test_output_is_a_png_of_the_original_frame_size(frame_size: tuple[int, int]) -> None:
    png = render_heatmap(uniform(0.1), frame_size, reference=1.0)
    image = decode_png(png)
    width, height = frame_size
    assert image.shape == (height, width, 3)
    assert image.dtype == np.uint8


def test_zero_error_is_dark_blue_everywhere() -> None:
    assert_all(decode_png(render_heatmap(uniform(0.0), (180, 120), reference=0.02)), JET_0)


def test_error_at_the_reference_is_full_colour() -> None:
    # Same size as the map: no interpolation, so the level is exactly 1.
    assert_all(decode_png(render_heatmap(uniform(0.02), (S, S), reference=0.02)), JET_255)


def test_error_above_the_reference_saturates() -> None:
    for errors in (uniform(0.04), uniform(10.0)):
        assert_all(decode_png(render_heatmap(errors, (180, 120), reference=0.02)), JET_255)


def test_half_the_reference_is_the_middle_of_the_scale() -> None:
    assert_all(decode_png(render_heatmap(uniform(0.01), (180, 120), reference=0.02)), JET_127)


def test_the_map_keeps_its_orientation_when_resized() -> None:
    errors = uniform(0.0)
    errors[: S // 2, : S // 2] = 1.0  # top-left quadrant anomalous
    image = decode_png(render_heatmap(errors, (180, 120), reference=0.5))
    assert tuple(image[10, 10]) == JET_255  # top-left
    assert tuple(image[10, 170]) == JET_0  # top-right
    assert tuple(image[110, 10]) == JET_0  # bottom-left
    assert tuple(image[110, 170]) == JET_0  # bottom-right
    hot = np.all(image == np.array(JET_255, np.uint8), axis=2)
    assert 0.2 < hot.mean() < 0.3  # about a quarter of the frame


def test_a_zero_reference_does_not_divide_by_zero() -> None:
    errors = uniform(0.0)
    errors[:, S // 2:] = 1e-6
    image = decode_png(render_heatmap(errors, (S, S), reference=0.0))
    assert_all(image[:, : S // 2], JET_0)
    assert_all(image[:, S // 2 + 1:], JET_255)


def test_float64_maps_are_accepted() -> None:
    assert_all(decode_png(render_heatmap(np.full((S, S), 0.01), (60, 40), reference=0.02)), JET_127)


# --- overlay ------------------------------------------------------------------------------------


def frame_of(bgr: tuple[int, int, int], width: int = 180, height: int = 120) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = bgr
    return frame


def test_overlay_blends_the_heatmap_over_the_frame() -> None:
    frame = frame_of((10, 200, 50))
    blended = decode_png(render_heatmap(uniform(0.0), (180, 120), reference=1.0, overlay=frame, alpha=0.5))
    assert_all(blended, (69, 100, 25))  # (frame + JET_0) / 2


def test_overlay_alpha_weights_the_heatmap() -> None:
    frame = frame_of((10, 200, 50))
    only_frame = decode_png(render_heatmap(uniform(0.0), (180, 120), 1.0, overlay=frame, alpha=0.0))
    only_heat = decode_png(render_heatmap(uniform(0.0), (180, 120), 1.0, overlay=frame, alpha=1.0))
    raw = decode_png(render_heatmap(uniform(0.0), (180, 120), 1.0))
    np.testing.assert_array_equal(only_frame, frame)
    np.testing.assert_array_equal(only_heat, raw)
    quarter = decode_png(render_heatmap(uniform(0.0), (180, 120), 1.0, overlay=frame, alpha=0.25))
    assert_all(quarter, (40, 150, 38))  # 0.75 * frame + 0.25 * JET_0, rounded


def test_overlay_shows_the_frame_structure() -> None:
    frame = frame_of((0, 0, 0))
    frame[:, 90:] = 200  # right half bright
    image = decode_png(render_heatmap(uniform(0.0), (180, 120), 1.0, overlay=frame, alpha=0.5))
    assert tuple(image[60, 10]) == (64, 0, 0)
    assert tuple(image[60, 170]) == (164, 100, 100)


def test_gray_and_bgra_overlays_are_converted_to_bgr() -> None:
    gray = np.full((120, 180), 100, np.uint8)
    image = decode_png(render_heatmap(uniform(0.0), (180, 120), 1.0, overlay=gray, alpha=0.5))
    assert image.shape == (120, 180, 3)
    assert_all(image, (114, 50, 50))

    bgra = np.concatenate([frame_of((10, 200, 50)), np.zeros((120, 180, 1), np.uint8)], axis=2)
    image = decode_png(render_heatmap(uniform(0.0), (180, 120), 1.0, overlay=bgra, alpha=0.5))
    assert image.shape == (120, 180, 3)
    assert_all(image, (69, 100, 25))  # alpha ignored: same as the BGR frame


# --- colour scale -------------------------------------------------------------------------------


def test_threshold_scale_uses_the_threshold_score_whatever_the_map() -> None:
    assert reference_level(uniform(0.5), "threshold", 0.02) == 0.02
    assert reference_level(uniform(0.0), "threshold", 0.02) == 0.02


def test_frame_scale_uses_the_map_maximum() -> None:
    errors = uniform(0.001)
    errors[3, 7] = 0.25
    level = reference_level(errors, "frame", 0.02)
    assert isinstance(level, float)
    assert level == 0.25


def test_frame_scale_of_an_all_zero_map_is_one() -> None:
    assert reference_level(uniform(0.0), "frame", 0.02) == 1.0


def test_frame_scale_saturates_a_normal_frame_that_threshold_scale_keeps_dim() -> None:
    errors = uniform(0.01)  # half the threshold score: a normal frame
    by_threshold = render_heatmap(errors, (S, S), reference_level(errors, "threshold", 0.02))
    by_frame = render_heatmap(errors, (S, S), reference_level(errors, "frame", 0.02))
    assert_all(decode_png(by_threshold), JET_127)
    assert_all(decode_png(by_frame), JET_255)
