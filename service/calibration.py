"""Per-stream calibration: each stream may learn the statistics of its own normal scene.

The causal z-score (`model.scoring.zscore`) needs the mean and spread of log patch scores on normal
frames. The weights carry those of their training scene; a camera elsewhere scores higher everywhere
(another look, other edges) and would alarm all the time. A stream therefore chooses:

    "model"                 the weights' (backend's) calibration, always
    "learn"                 no alarm while it learns `calibration_frames` scored frames, then its own
    "auto" (the default)    the weights' calibration from the first frame; when the first frames show a
                            scene the model was not trained on, it switches to learning and says so
    {"mu": m, "sigma": s}   fixed log-score statistics given by the operator

Learning uses robust statistics of the log scores: the median and the MAD (times 1.4826, the normal
consistency factor), so a brief anomaly inside the learning window moves neither much. A learned
calibration is stored (`CalibrationStore`) under the stream's name and model and reused when a stream of
the same name is created again, after a restart too.

"Not the training scene" is measured on the background level (`model.scoring.background_level`, the
median window error): an anomaly raises a few windows, another scene raises them all. With the shipped
weights, the median of its z over the first 5 scored frames is 0.5 to 3.3 on the 12 Ped2 test videos
(anomalous starts included; single frames reach 13, and the worst 5-frame median over any start is 7.6),
and above 17 on Ped2 footage mirrored, cropped and re-lit, and on a synthetic scene (docs/scene-checks.md).
Weights measured before that statistic existed fall back to the median patch z.

Everything here runs on the inference worker's thread, under the score stage's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from model.files import write_atomically
from model.scoring import zscore, zscore_inverse
from model.weights import Calibration

log = logging.getLogger("vad.calibration")

#: MAD -> standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826
#: Smallest learned spread of log scores: a perfectly static scene must not make every flicker an alarm.
MIN_SIGMA = 0.05


class CalibrationMode(StrEnum):
    AUTO = "auto"
    LEARN = "learn"
    MODEL = "model"
    FIXED = "fixed"


class CalibrationStatus(StrEnum):
    """What normalises a stream's scores now (the `calibration` of each frame result)."""

    CHECKING = "checking"  # auto: the first frames decide between the model's and a learned calibration
    MODEL = "model"  # the weights' (backend's) calibration
    LEARNING = "learning"  # learning its own: scored, never an alarm
    LEARNED = "learned"  # its own, learned (now or before, from the store)
    FIXED = "fixed"  # given by the operator


@dataclass(frozen=True)
class LearnedCalibration:
    """Robust statistics of a stream's log patch scores on its own normal frames."""

    log_mean: float  # median of log scores
    log_std: float  # 1.4826 * MAD of log scores (at least MIN_SIGMA)
    frames: int
    learned_at: float  # seconds since the epoch
    stream_name: str
    model: str
    weights_sha256: str
    # z of the learning frames' scores under these statistics: what "normal" looked like.
    z_p99: float
    z_max: float

    def normalize(self, score: float) -> float:
        return zscore(score, self.log_mean, self.log_std)

    def raw_score(self, z: float) -> float:
        return zscore_inverse(z, self.log_mean, self.log_std)


def learn(scores: np.ndarray, *, stream_name: str, model: str, weights_sha256: str) -> LearnedCalibration:
    """(N,) raw patch scores of normal frames -> their robust log statistics."""
    logs = np.log(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))
    median = float(np.median(logs))
    sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(logs - median))), MIN_SIGMA)
    z = (logs - median) / sigma
    return LearnedCalibration(
        log_mean=median, log_std=sigma, frames=len(logs), learned_at=time.time(), stream_name=stream_name,
        model=model, weights_sha256=weights_sha256, z_p99=round(float(np.quantile(z, 0.99)), 3),
        z_max=round(float(z.max()), 3),
    )


@dataclass(frozen=True)
class CalibrationChoice:
    """What a stream asked for: a mode, and for FIXED the operator's statistics."""

    mode: CalibrationMode = CalibrationMode.AUTO
    mu: float | None = None
    sigma: float | None = None


@dataclass(frozen=True)
class CalibrationPolicy:
    """Service-wide settings of per-stream calibration (the `scenes` section of the settings)."""

    frames: int = 1500  # scored frames to learn from (a minute at 25 fps)
    check_frames: int = 5  # auto: scored frames that decide whether the scene is the model's
    out_of_domain_z: float = 8.0  # background z above which a scene is not the model's
    out_of_domain_patch_z: float = 3.0  # the same, for weights without background statistics
    domain_window: int = 250  # recent frames the out-of-domain warning looks at


@dataclass(frozen=True)
class CalibrationView:
    """A stream's calibration for the API."""

    mode: CalibrationMode
    status: CalibrationStatus
    frames_learned: int
    frames_needed: int
    log_mean: float  # of what normalises now
    log_std: float
    learned: LearnedCalibration | None
    reason: str | None  # why auto switched to learning, or why a stored calibration was not used

    @property
    def progress(self) -> float:
        if self.status == CalibrationStatus.LEARNING:
            return round(min(1.0, self.frames_learned / max(1, self.frames_needed)), 4)
        return 1.0


class StreamCalibration:
    """One stream's calibration state machine (see the module docstring)."""

    def __init__(
        self,
        choice: CalibrationChoice,
        policy: CalibrationPolicy,
        model_calibration: Calibration,
        *,
        stream_name: str,
        model: str,
        weights_sha256: str,
        stored: LearnedCalibration | None = None,
        on_learned: Callable[[LearnedCalibration], None] | None = None,
    ) -> None:
        self.choice = choice
        self.policy = policy
        self.model_calibration = model_calibration
        self.stream_name = stream_name
        self.model = model
        self.weights_sha256 = weights_sha256
        self.on_learned = on_learned
        self.learned: LearnedCalibration | None = None
        self.reason: str | None = None
        self._samples: list[float] = []
        self._check: list[float] = []
        if choice.mode == CalibrationMode.FIXED:
            self.status = CalibrationStatus.FIXED
        elif choice.mode == CalibrationMode.MODEL:
            self.status = CalibrationStatus.MODEL
        elif stored is not None:
            self.learned, self.status = stored, CalibrationStatus.LEARNED
        elif choice.mode == CalibrationMode.LEARN:
            self.status = CalibrationStatus.LEARNING
        else:
            self.status = CalibrationStatus.CHECKING

    # --- what normalises now --------------------------------------------------------------------
    def _statistics(self) -> tuple[float, float]:
        if self.status == CalibrationStatus.FIXED:
            assert self.choice.mu is not None and self.choice.sigma is not None
            return self.choice.mu, self.choice.sigma
        if self.status == CalibrationStatus.LEARNED and self.learned is not None:
            return self.learned.log_mean, self.learned.log_std
        return self.model_calibration.log_mean, self.model_calibration.log_std

    def normalize(self, score: float) -> float:
        mean, std = self._statistics()
        return zscore(score, mean, std)

    def raw_score(self, z: float) -> float:
        mean, std = self._statistics()
        return zscore_inverse(z, mean, std)

    @property
    def alarms(self) -> bool:
        """Whether a frame may be flagged now (never while checking or learning)."""
        return self.status not in (CalibrationStatus.CHECKING, CalibrationStatus.LEARNING)

    def out_of_domain(self, score: float, background: float | None) -> float:
        """How far a frame sits from the model's scene: background z, else patch z (see the docstring)."""
        if background is not None:
            z = self.model_calibration.background_z(background)
            if z is not None:
                return z
        return self.model_calibration.normalize(score)

    def domain_limit(self) -> float:
        measured = self.model_calibration.background_log_mean is not None
        return self.policy.out_of_domain_z if measured else self.policy.out_of_domain_patch_z

    # --- one scored frame ---------------------------------------------------------------------
    def observe(self, score: float, background: float | None) -> bool:
        """Take one scored frame's raw score (before it is normalised). True when what normalises changed
        (the caller restarts its smoothing)."""
        if self.status == CalibrationStatus.CHECKING:
            self._check.append(self.out_of_domain(score, background))
            self._samples.append(score)
            if len(self._check) < self.policy.check_frames:
                return False
            median = statistics.median(self._check)
            self._check = []
            if median > self.domain_limit():
                self.status = CalibrationStatus.LEARNING
                self.reason = (f"the first frames sit far outside the model's normal scene (median z "
                               f"{median:.1f} > {self.domain_limit():g}); learning this stream's own normal")
                log.info("stream %s: %s", self.stream_name, self.reason)
            else:
                self.status, self._samples = CalibrationStatus.MODEL, []
            return False  # checking, learning and model all normalise with the model's statistics
        if self.status == CalibrationStatus.LEARNING:
            self._samples.append(score)
            if len(self._samples) >= self.policy.frames:
                self.learned = learn(np.asarray(self._samples), stream_name=self.stream_name, model=self.model,
                                     weights_sha256=self.weights_sha256)
                self._samples = []
                self.status = CalibrationStatus.LEARNED
                log.info("stream %s learned its calibration from %d frames: mu %.3f, sigma %.3f",
                         self.stream_name, self.learned.frames, self.learned.log_mean, self.learned.log_std)
                if self.on_learned is not None:
                    self.on_learned(self.learned)
                return True
        return False

    # --- operator actions ---------------------------------------------------------------------
    def relearn(self) -> None:
        self._restart(CalibrationMode.LEARN, CalibrationStatus.LEARNING)

    def use_model(self) -> None:
        self._restart(CalibrationMode.MODEL, CalibrationStatus.MODEL)

    def _restart(self, mode: CalibrationMode, status: CalibrationStatus) -> None:
        self.choice = CalibrationChoice(mode)
        self.learned, self.reason, self._samples, self._check = None, None, [], []
        self.status = status

    def view(self) -> CalibrationView:
        mean, std = self._statistics()
        learning = self.status in (CalibrationStatus.LEARNING, CalibrationStatus.CHECKING)
        return CalibrationView(
            mode=self.choice.mode, status=self.status,
            frames_learned=len(self._samples) if learning else (self.learned.frames if self.learned else 0),
            frames_needed=self.policy.frames, log_mean=mean, log_std=std, learned=self.learned, reason=self.reason,
        )


class DomainMonitor:
    """The out-of-domain warning: the median, over the last frames, of how far each sits from the model's
    scene (`StreamCalibration.out_of_domain`), compared with its limit."""

    def __init__(self, window: int) -> None:
        self._values: deque[float] = deque(maxlen=max(1, window))

    def add(self, value: float) -> None:
        self._values.append(value)

    def median(self) -> float | None:
        return statistics.median(self._values) if self._values else None

    def reset(self) -> None:
        self._values.clear()


# --- storage ------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def weights_digest(path: Path) -> str:
    """sha256 of a weights file: a learned calibration belongs to these exact weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class CalibrationStore:
    """Learned calibrations as small JSON files: DIR/MODEL/NAME.json (names made file-safe, with a hash of
    the original so two names never share a file). Written atomically; a file of other weights (same model
    name, retrained) is not used. At most `max_files` are kept: beyond, the oldest are deleted (policy
    "drop-oldest", counted in `evicted`)."""

    def __init__(self, folder: Path | None, max_files: int = 10_000) -> None:
        self.folder = folder
        self.max_files = max_files
        self.evicted = 0

    def _path(self, model: str, stream_name: str) -> Path:
        assert self.folder is not None
        safe = _UNSAFE.sub("_", stream_name)[:80] or "_"
        tag = hashlib.sha256(stream_name.encode()).hexdigest()[:8]
        return self.folder / _UNSAFE.sub("_", model) / f"{safe}-{tag}.json"

    def load(self, model: str, stream_name: str, weights_sha256: str) -> tuple[LearnedCalibration | None, str | None]:
        """(calibration, None), or (None, why not) — the reason is None when there simply is none."""
        if self.folder is None:
            return None, None
        path = self._path(model, stream_name)
        try:
            data = json.loads(path.read_text())
            learned = LearnedCalibration(**data)
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, TypeError) as exc:
            return None, f"stored calibration {path} is unreadable ({exc}); learning again"
        if not (math.isfinite(learned.log_mean) and math.isfinite(learned.log_std) and learned.log_std > 0):
            return None, f"stored calibration {path} holds invalid statistics; learning again"
        if learned.weights_sha256 != weights_sha256:
            return None, f"stored calibration {path} was learned with other weights of model {model!r}; learning again"
        return learned, None

    def save(self, learned: LearnedCalibration) -> None:
        if self.folder is None:
            return
        write_atomically(self._path(learned.model, learned.stream_name),
                         (json.dumps(asdict(learned), indent=2) + "\n").encode())
        self._prune()

    def _prune(self) -> None:
        assert self.folder is not None
        files = list(self.folder.glob("*/*.json"))
        if len(files) <= self.max_files:
            return
        dated = []
        for file in files:
            with contextlib.suppress(OSError):
                dated.append((file.stat().st_mtime_ns, file))
        for _, file in sorted(dated)[: len(dated) - self.max_files]:
            with contextlib.suppress(OSError):
                file.unlink()
                self.evicted += 1
                log.info("deleted the oldest stored calibration %s (more than %d kept)", file, self.max_files)

    def delete(self, model: str, stream_name: str) -> None:
        if self.folder is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._path(model, stream_name).unlink()
