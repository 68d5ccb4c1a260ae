"""Source stage for pushed images: encoded bytes -> decoded uint8 frame, with the safety checks.

The pixel cap is checked from the image header (PIL's Image.open reads only the header; PNG IHDR,
JPEG SOF) before any pixel is decoded, so a small file declaring a huge image costs nothing.
Decoding then uses OpenCV with IMREAD_UNCHANGED, as `model.data.read_image` does, so a pushed frame
scores exactly as the same file read by `vad evaluate`.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image

from .domain import ImageTooLarge, InvalidImage, UnsupportedMediaType

# Content types accepted for a frame; octet-stream means "look at the bytes".
ACCEPTED_CONTENT_TYPES = {"image/jpeg", "image/jpg", "image/png", "application/octet-stream"}
# MPO: a multi-picture JPEG (phone cameras); its first picture is a plain JPEG stream that OpenCV decodes.
ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG"}


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in ACCEPTED_CONTENT_TYPES:
        shown = media or "none"
        raise UnsupportedMediaType(
            f"Content-Type {shown!r} is not supported; send one encoded image as image/jpeg or image/png"
        )


def probe_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header; refuses non-JPEG/PNG data and images above the pixel cap."""
    if not data:
        raise InvalidImage("empty body: send one encoded JPEG or PNG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: header only
                width, height = image.size
                kind = image.format
    except Image.DecompressionBombError as exc:
        # PIL refuses sizes far above its own limit while parsing the header; same answer as ours.
        raise ImageTooLarge(f"image declares too many pixels ({exc}); the limit is {max_pixels}") from exc
    except Image.UnidentifiedImageError as exc:  # its message names an internal BytesIO object
        raise InvalidImage("cannot decode this image: not a JPEG or PNG file") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"cannot decode this image: not a JPEG or PNG file ({exc})") from exc
    if kind not in ACCEPTED_FORMATS:
        raise InvalidImage(f"image format {kind} is not supported; send JPEG or PNG")
    if width < 1 or height < 1:
        raise InvalidImage(f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} pixels"
        )
    return width, height


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded JPEG/PNG -> uint8 (H, W) or (H, W, 3|4) BGR(A), as `model.data.read_image` decodes files."""
    width, height = probe_size(data, max_pixels)
    frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise InvalidImage(f"cannot decode this image: the {width}x{height} header is followed by corrupt data")
    if frame.shape[:2] != (height, width):
        raise InvalidImage(
            f"cannot decode this image: header says {width}x{height}, data is {frame.shape[1]}x{frame.shape[0]}"
        )
    if frame.dtype != np.uint8:  # 16-bit PNG: same normalisation as model.data.read_image
        frame = cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return frame


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """Any decoded frame -> uint8 (H, W, 3) BGR, for overlays."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[0], frame.shape[1]), cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return np.ascontiguousarray(frame[:, :, :3])
    return frame
