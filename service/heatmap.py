"""Error map (E², model pixels) -> PNG at the original frame size, optionally blended over the frame.

Colour scale: by default E² is divided by the raw score at the anomaly threshold, so a normal frame
stays dark and an anomaly saturates (colours mean the same thing from frame to frame);
scale="frame" stretches each map to its own maximum instead (shows structure on normal frames too).

Frames kept for overlays (`KeptFrame`, made by `keep_frame`): a stream keeps its last scored frames
for GET /heatmap?overlay=true, so each is kept small. A frame of at most RAW_FRAME_MAX_BYTES decoded
and no longer than `max_side` is kept as it is (exact overlays, nothing to encode); a larger one is
downscaled so its longer side is at most `max_side` (0: keep its size) and JPEG-encoded (quality
JPEG_QUALITY). It is decoded only when an overlay is asked for, and `render_heatmap` scales it back
up to the original frame size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from .decode import to_bgr

HeatmapScale = Literal["threshold", "frame"]

# Frames up to this many decoded bytes (e.g. 320x240 BGR, 360x240 gray) are kept raw: JPEG would
# save little and cost CPU on every scored frame.
RAW_FRAME_MAX_BYTES = 256 * 1024
JPEG_QUALITY = 85


@dataclass(frozen=True)
class KeptFrame:
    """A frame kept for heatmap overlays: the decoded frame itself, or JPEG bytes of a smaller copy."""

    data: np.ndarray  # the decoded frame (raw), or 1-D uint8 JPEG bytes (encoded)
    encoded: bool
    size: tuple[int, int]  # (W, H) of the kept image (after any downscaling)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def decode(self) -> np.ndarray:
        """The kept image as uint8 (H, W) gray or (H, W, 3) BGR (raw frames: as decoded)."""
        if not self.encoded:
            return self.data
        image = cv2.imdecode(self.data, cv2.IMREAD_UNCHANGED)
        if image is None:  # pragma: no cover - we encoded it ourselves
            raise RuntimeError("a kept JPEG frame could not be decoded")
        return image


def keep_frame(frame: np.ndarray, max_side: int, quality: int = JPEG_QUALITY) -> KeptFrame:
    """A decoded uint8 frame -> what history keeps of it for overlays (see the module docstring)."""
    height, width = frame.shape[:2]
    longer = max(width, height)
    if frame.nbytes <= RAW_FRAME_MAX_BYTES and (max_side <= 0 or longer <= max_side):
        return KeptFrame(frame, encoded=False, size=(width, height))
    image = frame if frame.ndim == 2 or frame.shape[2] == 1 else to_bgr(frame)  # overlays ignore alpha
    if max_side > 0 and longer > max_side:
        scale = max_side / longer
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - imencode of a uint8 image does not fail
        raise RuntimeError("JPEG encoding failed")
    return KeptFrame(data.reshape(-1), encoded=True, size=(image.shape[1], image.shape[0]))


def render_heatmap(
    errors: np.ndarray,
    frame_size: tuple[int, int],
    reference: float,
    overlay: np.ndarray | None = None,
    alpha: float = 0.5,
) -> bytes:
    """`heatmap_image` as PNG."""
    ok, png = cv2.imencode(".png", heatmap_image(errors, frame_size, reference, overlay, alpha))
    if not ok:  # pragma: no cover - imencode of a uint8 BGR image does not fail
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


def heatmap_image(
    errors: np.ndarray,
    frame_size: tuple[int, int],
    reference: float,
    overlay: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """errors (S, S) float; frame_size (W, H); reference: the E² value shown at full colour.
    overlay: the frame, at frame_size or smaller (a kept, downscaled frame: scaled up to frame_size).
    Returns uint8 BGR (H, W, 3)."""
    width, height = frame_size
    resized = cv2.resize(errors.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    level = np.clip(resized / max(reference, 1e-12), 0.0, 1.0)
    colour = cv2.applyColorMap((level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    if overlay is not None:
        background = to_bgr(overlay)
        if background.shape[:2] != (height, width):
            background = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
        colour = cv2.addWeighted(background, 1.0 - alpha, colour, alpha, 0.0)
    return colour


def reference_level(errors: np.ndarray, scale: HeatmapScale, threshold_score: float) -> float:
    if scale == "frame":
        return float(errors.max()) or 1.0
    return threshold_score
