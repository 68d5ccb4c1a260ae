"""Buffer stage: each stream's ring of its last T preprocessed frames.

Frames enter already resized by `model.data.resize_frame` (uint8 S×S×C, small); a clip is built in
the model's input layout only when the ring is full, so scoring sees exactly what `vad evaluate` sees.
Not thread-safe on its own: the stream manager holds the stream's lock around it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from model.data import to_model_range


class FrameRing:
    def __init__(self, frames: int) -> None:
        self.frames = frames
        self._ring: deque[np.ndarray] = deque(maxlen=frames)
        self.frame_size: tuple[int, int] | None = None  # (width, height) of the original frames
        self.epoch = 0  # bumped on every reset; the score stage restarts its smoothing on a new epoch

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def full(self) -> bool:
        return len(self._ring) == self.frames

    def reset(self) -> None:
        self._ring.clear()
        self.frame_size = None
        self.epoch += 1

    def push(self, resized: np.ndarray, frame_size: tuple[int, int]) -> None:
        self._ring.append(resized)
        self.frame_size = frame_size

    def clip(self) -> np.ndarray:
        """float32 (T*C, S, S) in [-1, 1], oldest frame first: the model's input for the newest frame."""
        x = to_model_range(np.stack(self._ring))  # (T, C, S, S)
        t, c, h, w = x.shape
        return np.ascontiguousarray(x.reshape(t * c, h, w))
