"""Score stage: one row of ClipScores -> a FrameResult, under the causal protocol of `vad evaluate`.

normalized_score = calibration.normalize(score) (`model.scoring.zscore`: z of the log score on held-out
normal frames); smoothed_score = `model.scoring.TrailingMean` of the stream's last CAUSAL_WINDOW
normalised scores (fewer at the start and after a buffer reset); is_anomaly = smoothed_score >= threshold. Stateless requests have no
history: their smoothed score is their normalised score.

Runs on the inference worker thread; the lock only guards `forget` from API threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from model.network import DESDnetConfig
from model.scoring import CAUSAL_WINDOW, TrailingMean
from model.weights import Calibration

from .domain import FrameResult, Patch


@dataclass(frozen=True)
class ScoredFrame:
    result: FrameResult
    errors: np.ndarray  # float32 (S, S) squared error map E² in model pixels


class Scorer:
    def __init__(
        self, config: DESDnetConfig, calibration: Calibration, threshold: float, window: int = CAUSAL_WINDOW
    ) -> None:
        self.config = config
        self.calibration = calibration
        self.threshold = threshold
        self.window = window
        self._history: dict[str, tuple[int, TrailingMean]] = {}
        self._lock = threading.Lock()

    def forget(self, stream_id: str) -> None:
        with self._lock:
            self._history.pop(stream_id, None)

    def _smooth(self, stream_id: str | None, epoch: int, normalized: float) -> float:
        if stream_id is None:
            return normalized
        with self._lock:
            known = self._history.get(stream_id)
            if known is None or known[0] != epoch:  # new stream or buffer reset: start again
                known = (epoch, TrailingMean(self.window))
                self._history[stream_id] = known
            return known[1].add(normalized)

    def patch(self, y: int, x: int, frame_size: tuple[int, int]) -> Patch:
        """Top window from model pixels to the original frame's pixels (the resize is not aspect-preserving)."""
        width, height = frame_size
        s = self.config.image_size
        sx, sy = width / s, height / s
        size = self.config.patch_size
        left, top = round(x * sx), round(y * sy)
        return Patch(
            x=left, y=top, w=min(round(size * sx), width - left), h=min(round(size * sy), height - top)
        )

    def result(
        self,
        *,
        stream_id: str | None,
        frame_index: int,
        epoch: int,
        score: float,
        y: int,
        x: int,
        frame_size: tuple[int, int],
        timestamp: float,
        received_at: float,
        frames_buffered: int,
    ) -> FrameResult:
        normalized = self.calibration.normalize(score)
        smoothed = self._smooth(stream_id, epoch, normalized)
        return FrameResult(
            stream_id=stream_id,
            frame_index=frame_index,
            status="scored",
            timestamp=timestamp,
            latency_ms=(time.monotonic() - received_at) * 1000,
            frame_width=frame_size[0],
            frame_height=frame_size[1],
            score=score,
            normalized_score=normalized,
            smoothed_score=smoothed,
            threshold=self.threshold,
            is_anomaly=smoothed >= self.threshold,
            patch=self.patch(y, x, frame_size),
            frames_buffered=frames_buffered,
        )

    def threshold_score(self) -> float:
        """The raw patch score whose normalised value equals the threshold (heatmap colour scale)."""
        return self.calibration.raw_score(self.threshold)
