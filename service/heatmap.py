"""Error map (E², model pixels) -> PNG at the original frame size, optionally blended over the frame.

Colour scale: by default E² is divided by the raw score at the anomaly threshold, so a normal frame
stays dark and an anomaly saturates (colours mean the same thing from frame to frame);
scale="frame" stretches each map to its own maximum instead (shows structure on normal frames too).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from .decode import to_bgr

HeatmapScale = Literal["threshold", "frame"]


def render_heatmap(
    errors: np.ndarray,
    frame_size: tuple[int, int],
    reference: float,
    overlay: np.ndarray | None = None,
    alpha: float = 0.5,
) -> bytes:
    """errors (S, S) float; frame_size (W, H); reference: the E² value shown at full colour."""
    width, height = frame_size
    resized = cv2.resize(errors.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    level = np.clip(resized / max(reference, 1e-12), 0.0, 1.0)
    colour = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    if overlay is not None:
        colour = cv2.addWeighted(to_bgr(overlay), 1.0 - alpha, colour, alpha, 0.0)
    ok, png = cv2.imencode(".png", colour)
    if not ok:  # pragma: no cover - imencode of a uint8 BGR image does not fail
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


def reference_level(errors: np.ndarray, scale: HeatmapScale, threshold_score: float) -> float:
    if scale == "frame":
        return float(errors.max()) or 1.0
    return threshold_score
