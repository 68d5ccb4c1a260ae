"""Score stage: one row of ClipScores -> a FrameResult, under the causal protocol of `vad evaluate`.

For a stream frame: the error map loses its ignored pixels (service/regions.py) and the patch score is
taken again when the stream has ignore regions; normalized_score = the stream's calibration
(service/calibration.py: the model's, its own learned one, or fixed) applied to the raw score
(`model.scoring.zscore`); smoothed_score = `model.scoring.TrailingMean` of the stream's last
CAUSAL_WINDOW normalised scores (fewer at the start, after a buffer reset and after the calibration
changed); is_anomaly = smoothed_score >= the stream's threshold, never while its calibration is
checking or learning. Stateless requests have no history: the model's calibration and threshold, and
their smoothed score is their normalised score.

One Scorer per loaded model. Runs on that model's inference worker thread; the lock guards the
per-stream state against API threads (PATCH, calibration endpoints, deletes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from model.network import DESDnetConfig
from model.scoring import CAUSAL_WINDOW, TrailingMean, background_level, patch_score_squared
from model.weights import Calibration

from .calibration import (
    CalibrationChoice,
    CalibrationPolicy,
    CalibrationStatus,
    CalibrationView,
    DomainMonitor,
    LearnedCalibration,
    StreamCalibration,
)
from .domain import FrameResult, Patch
from .regions import IgnoreRegions, keep_mask


@dataclass(frozen=True)
class ScoredFrame:
    result: FrameResult
    errors: np.ndarray  # float32 (S, S) squared error map E² in model pixels, ignored pixels zeroed


@dataclass(frozen=True)
class ScoringView:
    """A stream's scoring settings and state, for the API."""

    threshold: float  # in use (the stream's own, else the model's)
    threshold_is_default: bool
    calibration: CalibrationView
    regions: IgnoreRegions
    domain_z: float | None  # median distance from the model's scene over the last frames
    domain_limit: float
    warnings: tuple[str, ...]


@dataclass(eq=False)
class _StreamScoring:
    calibration: StreamCalibration
    threshold: float | None
    regions: IgnoreRegions
    domain: DomainMonitor
    smoother: TrailingMean
    epoch: int = -1
    mask: tuple[tuple[int, int], np.ndarray] | None = None  # (frame size, keep mask)
    frame_size: tuple[int, int] | None = None


class Scorer:
    def __init__(
        self, config: DESDnetConfig, calibration: Calibration, threshold: float, window: int = CAUSAL_WINDOW,
        *, policy: CalibrationPolicy | None = None,
    ) -> None:
        self.config = config
        self.calibration = calibration  # the model's (backend's); the autotune may replace it
        self.threshold = threshold  # the model's default threshold
        self.window = window
        self.policy = policy or CalibrationPolicy()
        self._streams: dict[str, _StreamScoring] = {}
        self._lock = threading.Lock()

    # --- per-stream configuration (API threads) ---------------------------------------------------
    def configure(
        self, stream_id: str, *, stream_name: str, model: str, weights_sha256: str,
        choice: CalibrationChoice, threshold: float | None, regions: IgnoreRegions,
        stored: LearnedCalibration | None = None, stored_reason: str | None = None,
        on_learned: Callable[[LearnedCalibration], None] | None = None,
    ) -> None:
        calibration = StreamCalibration(
            choice, self.policy, self.calibration, stream_name=stream_name, model=model,
            weights_sha256=weights_sha256, stored=stored, on_learned=on_learned,
        )
        if stored_reason is not None:
            calibration.reason = stored_reason
        with self._lock:
            self._streams[stream_id] = _StreamScoring(
                calibration, threshold, regions, DomainMonitor(self.policy.domain_window), TrailingMean(self.window)
            )

    def forget(self, stream_id: str) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)

    def set_threshold(self, stream_id: str, threshold: float | None) -> None:
        with self._lock:
            self._streams[stream_id].threshold = threshold

    def set_regions(self, stream_id: str, regions: IgnoreRegions) -> None:
        with self._lock:
            state = self._streams[stream_id]
            state.regions, state.mask = regions, None

    def relearn(self, stream_id: str) -> None:
        with self._lock:
            state = self._streams[stream_id]
            state.calibration.relearn()
            state.smoother = TrailingMean(self.window)

    def use_model_calibration(self, stream_id: str) -> None:
        with self._lock:
            state = self._streams[stream_id]
            state.calibration.use_model()
            state.smoother = TrailingMean(self.window)

    def relearn_learned(self, reason: str) -> None:
        """Streams that learned their calibration learn it again (e.g. the model's weights changed)."""
        with self._lock:
            for state in self._streams.values():
                if state.calibration.status == CalibrationStatus.LEARNED:
                    state.calibration.relearn()
                    state.calibration.reason = reason
                    state.smoother = TrailingMean(self.window)

    def set_model_calibration(self, calibration: Calibration, threshold: float) -> None:
        """Another backend's calibration (the autotune's switch), for every stream from the next frame."""
        with self._lock:
            self.calibration, self.threshold = calibration, threshold
            for state in self._streams.values():
                state.calibration.model_calibration = calibration

    def view(self, stream_id: str) -> ScoringView | None:
        with self._lock:
            state = self._streams.get(stream_id)
            if state is None:
                return None
            calibration = state.calibration
            domain_z = state.domain.median()
            limit = calibration.domain_limit()
            warnings = []
            if domain_z is not None and domain_z > limit:
                fix = ("this stream learned its own calibration, so its alarms are meaningful"
                       if calibration.status == CalibrationStatus.LEARNED else
                       "per-stream calibration is learning" if calibration.status == CalibrationStatus.LEARNING
                       else "use calibration \"auto\" or \"learn\" (POST /v1/streams/{id}/calibration)")
                warnings.append(
                    f"out of domain: this scene is far from the one the model was trained on (median z {domain_z:.1f} "
                    f"> {limit:g}); {fix}; a scene model trained on this camera's footage would see more "
                    "(`vad train --data VIDEO --init WEIGHTS`)"
                )
            if state.frame_size is not None and state.regions:
                outside = state.regions.outside(state.frame_size)
                if outside:
                    warnings.append(
                        f"ignore regions {outside} reach outside the {state.frame_size[0]}x{state.frame_size[1]} "
                        "frames; only their part inside is ignored"
                    )
            return ScoringView(
                threshold=self.threshold if state.threshold is None else state.threshold,
                threshold_is_default=state.threshold is None, calibration=calibration.view(),
                regions=state.regions, domain_z=domain_z, domain_limit=limit, warnings=tuple(warnings),
            )

    # --- one scored frame (worker thread) ----------------------------------------------------------
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

    def _masked(self, state: _StreamScoring, errors: np.ndarray, frame_size: tuple[int, int]):
        """E² without the ignored pixels, and its patch score, top window and background level."""
        if state.mask is None or state.mask[0] != frame_size:
            state.mask = (frame_size, keep_mask(state.regions, frame_size, self.config.image_size))
        masked = errors * state.mask[1]
        squared = torch.from_numpy(masked)[None]
        top = patch_score_squared(squared, self.config.patch_size, self.config.patch_stride)
        background = background_level(squared, self.config.patch_size, self.config.patch_stride)
        return masked, float(top.score[0]), int(top.y[0]), int(top.x[0]), float(background[0])

    def score(
        self,
        *,
        stream_id: str | None,
        frame_index: int,
        epoch: int,
        score: float,
        y: int,
        x: int,
        errors: np.ndarray,
        background: float | None,
        frame_size: tuple[int, int],
        timestamp: float,
        received_at: float,
        frames_buffered: int,
    ) -> ScoredFrame:
        with self._lock:
            state = self._streams.get(stream_id) if stream_id is not None else None
            if state is None:  # stateless (or a stream deleted meanwhile): the model's calibration
                normalized = self.calibration.normalize(score)
                return ScoredFrame(self._result(
                    stream_id, frame_index, score, normalized, normalized, self.threshold, True,
                    self.calibration.raw_score(self.threshold), None, y, x, frame_size, timestamp, received_at,
                    frames_buffered,
                ), errors)
            state.frame_size = frame_size
            if state.regions:
                errors, score, y, x, background = self._masked(state, errors, frame_size)
            calibration = state.calibration
            state.domain.add(calibration.out_of_domain(score, background))
            if calibration.observe(score, background) or state.epoch != epoch:
                state.smoother, state.epoch = TrailingMean(self.window), epoch  # a new scale, or a new clip
            normalized = calibration.normalize(score)
            smoothed = state.smoother.add(normalized)
            threshold = self.threshold if state.threshold is None else state.threshold
            result = self._result(
                stream_id, frame_index, score, normalized, smoothed, threshold, calibration.alarms,
                calibration.raw_score(threshold), calibration.status, y, x, frame_size, timestamp, received_at,
                frames_buffered,
            )
        return ScoredFrame(result, errors)

    def _result(
        self, stream_id: str | None, frame_index: int, score: float, normalized: float, smoothed: float,
        threshold: float, alarms: bool, threshold_score: float, status: CalibrationStatus | None, y: int, x: int,
        frame_size: tuple[int, int], timestamp: float, received_at: float, frames_buffered: int,
    ) -> FrameResult:
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
            threshold=threshold,
            is_anomaly=alarms and smoothed >= threshold,
            patch=self.patch(y, x, frame_size),
            frames_buffered=frames_buffered,
            calibration=status.value if status is not None else None,
            threshold_score=threshold_score,
        )

    def threshold_score(self) -> float:
        """The raw patch score whose normalised value equals the model's threshold (heatmap colour scale)."""
        return self.calibration.raw_score(self.threshold)
