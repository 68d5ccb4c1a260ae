"""Per-stream calibration on scenes that are not Ped2's, and on Ped2 itself, measured with the shipped weights.

    python -m bench.scenes [--weights W] [--data PED2] [--output bench/results/scenes] [--minutes 10]
                           [--batch 8] [--threads N] [--quick]

Frames are scored by the network (torch fp32, `model.backends.score_clips`, batched), and each scored
frame's raw patch score, top window and background level are fed, in order, through the service's own
`service.score.Scorer` (one stream per sequence, the real `StreamCalibration`, the `CalibrationPolicy` of
the default settings), exactly as the inference worker does. A sequence is a list of segments (shots):
each starts a new ring epoch, as the service's buffer reset does, and its first T-1 frames are not scored.

Reported (docs/scene-checks.md explains the choices):
 (i)   Ped2: a stream learns from training video 16, then scores the 12 test videos -> micro AUC of its
       smoothed scores, against `vad evaluate`'s causal protocol (computed here by model/evaluate.py);
 (ii)  learning on the first N frames of each test video itself (N = 25, 50, 100) -> AUC, honestly;
 (iii) calibration auto with the defaults on long foreign normal-only footage (Ped2 training videos through
       other cameras' looks, a synthetic scene) -> flagged share after learning, event-length runs per
       10 minutes; and what the weights' own calibration would have flagged;
 (iv)  synthetic anomalies after learning -> frames from appearance to the first flag, patch on the object;
 (v)   the new user's run: 200 frames of a foreign normal clip with the defaults -> flagged frames;
 and auto on each Ped2 test video (must stay on the model's calibration).
Writes scenes.json and scenes.md under --output, with the CPU (lscpu) and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from model.backends import make_backend, score_clips
from model.data import list_videos, load_labels, resize_frame, split_folder, to_model_range
from model.evaluate import EvaluateOptions, causal_protocol, protocol_metrics, roc_auc, score_videos
from model.paths import DEFAULT_WEIGHTS
from model.scoring import CAUSAL_WINDOW
from model.weights import LoadedWeights, load_weights
from service.calibration import CalibrationChoice, CalibrationMode, CalibrationPolicy, weights_digest
from service.regions import IgnoreRegions
from service.score import Scorer, ScoringView
from service.settings import SceneSettings
from tests.support.data import PED2
from tests.support.scenes import (
    LOOKS,
    SCENE_SIZE,
    Look,
    SceneAnomaly,
    SyntheticScene,
    box_overlap,
    foreign_ped2,
    new_user_clip,
    read_ped2,
)

FPS = 25.0  # frames per second of the footage (Ped2's rate; a minute of learning = 1500 frames)
#: A run of at least this many consecutive flagged frames counts as an event (a false one here): the
#: smoothing window. One spiking frame raises the trailing mean for exactly CAUSAL_WINDOW frames, so this
#: is the shortest run a real alert could come from; counting from it counts every such run.
EVENT_FRAMES = CAUSAL_WINDOW
DEFAULT_OUTPUT = Path("bench") / "results" / "scenes"
#: Other thresholds on the smoothed z at which the false alarms are also counted (the default: the weights').
THRESHOLDS = (2.5, 3.0, 3.5, 4.0, 5.0)
#: What `--parts` chooses from: (i), (ii) and auto on Ped2; (iii); (iv); (v).
PARTS = ("ped2", "foreign", "anomalies", "new_user")


# --- the network ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """What the network says about one segment's scored frames (t >= T-1), as the service's score stage
    receives it."""

    score: np.ndarray  # float64 raw patch score
    y: np.ndarray  # int top window row (model pixels)
    x: np.ndarray
    background: np.ndarray  # float64 background level

    def __len__(self) -> int:
        return len(self.score)


class Network:
    """The weights on the torch fp32 backend, scoring clips in batches."""

    def __init__(self, weights: Path = DEFAULT_WEIGHTS, batch: int = 8) -> None:
        self.path = Path(weights)
        self.weights: LoadedWeights = load_weights(self.path)
        self.config = self.weights.config
        self.backend = make_backend(self.weights.model, "torch", "fp32", "cpu")
        self.batch = batch
        self.digest = weights_digest(self.path)
        self.frames_scored = 0
        self.seconds = 0.0

    def resize(self, frames: Iterable[np.ndarray], jpeg: bool = True) -> np.ndarray:
        """BGR frames -> uint8 (N, S, S, C) as the service holds them. jpeg: through a JPEG round trip first
        (quality 95, what the tests' clients send), as a frame pushed over HTTP arrives."""
        out = []
        for frame in frames:
            if jpeg:
                ok, data = cv2.imencode(".jpg", frame)
                assert ok
                frame = cv2.imdecode(data, cv2.IMREAD_COLOR)
            out.append(resize_frame(frame, self.config))
        return np.stack(out)

    def score(self, resized: np.ndarray) -> Raw:
        """uint8 (N, S, S, C) frames of one continuous segment -> Raw of its N - T + 1 clips."""
        t = self.config.frames
        x = to_model_range(resized)  # (N, C, S, S)
        n, c, s, _ = x.shape
        parts: dict[str, list[np.ndarray]] = {"score": [], "y": [], "x": [], "background": []}
        began = time.perf_counter()
        with torch.inference_mode():
            for start in range(t - 1, n, self.batch):
                stop = min(n, start + self.batch)
                clips = np.stack([x[i - t + 1 : i + 1].reshape(t * c, s, s) for i in range(start, stop)])
                scores = score_clips(self.backend, torch.from_numpy(clips))
                assert scores.background is not None
                parts["score"].append(scores.score.numpy().astype(np.float64))
                parts["y"].append(scores.y.numpy())
                parts["x"].append(scores.x.numpy())
                parts["background"].append(scores.background.numpy().astype(np.float64))
        self.seconds += time.perf_counter() - began
        self.frames_scored += max(0, n - t + 1)
        return Raw(*(np.concatenate(parts[k]) for k in ("score", "y", "x", "background")))

    def score_frames(self, frames: Iterable[np.ndarray], jpeg: bool = True) -> Raw:
        return self.score(self.resize(frames, jpeg))


# --- the service's score stage ----------------------------------------------------------------------


def default_policy(**overrides: Any) -> CalibrationPolicy:
    """The CalibrationPolicy the service builds from its settings (service/context.py), with the default
    `scenes` settings and these overrides (frames=..., ...)."""
    scenes = SceneSettings()
    policy = dict(frames=scenes.calibration_frames, check_frames=scenes.calibration_check_frames,
                  out_of_domain_z=scenes.out_of_domain_z, domain_window=scenes.out_of_domain_window)
    return CalibrationPolicy(**{**policy, **overrides})


def default_choice() -> CalibrationChoice:
    return CalibrationChoice(CalibrationMode(SceneSettings().calibration))


@dataclass
class Run:
    """One stream's scored frames, as the score stage answered them."""

    segment: np.ndarray  # int: which segment each scored frame belongs to
    score: np.ndarray
    normalized: np.ndarray
    smoothed: np.ndarray
    flagged: np.ndarray  # bool: is_anomaly
    status: np.ndarray  # str: the calibration status of each frame
    patch: np.ndarray  # (N, 4) int x, y, w, h in frame pixels
    view: ScoringView  # after the last frame: calibration, reason, domain z, warnings

    def where(self, status: str) -> np.ndarray:
        return self.status == status


def replay(
    network: Network, segments: Sequence[Raw], *, choice: CalibrationChoice | None = None,
    policy: CalibrationPolicy | None = None, frame_size: tuple[int, int] = SCENE_SIZE, name: str = "scene",
) -> Run:
    """Feed the segments' raw scores, in order, through a fresh Scorer stream (a new epoch per segment)."""
    cfg = network.config
    calibration = network.weights.calibration
    scorer = Scorer(cfg, calibration, calibration.threshold, policy=policy or default_policy())
    scorer.configure(name, stream_name=name, model=network.path.stem, weights_sha256=network.digest,
                     choice=choice or default_choice(), threshold=None, regions=IgnoreRegions())
    errors = np.zeros((cfg.image_size, cfg.image_size), np.float32)  # used only with ignore regions (none here)
    rows: dict[str, list[Any]] = {k: [] for k in ("segment", "score", "normalized", "smoothed", "flagged",
                                                  "status", "patch")}
    index = 0
    for epoch, raw in enumerate(segments):
        for i in range(len(raw)):
            result = scorer.score(
                stream_id=name, frame_index=index, epoch=epoch, score=float(raw.score[i]), y=int(raw.y[i]),
                x=int(raw.x[i]), errors=errors, background=float(raw.background[i]), frame_size=frame_size,
                timestamp=index / FPS, received_at=time.monotonic(), frames_buffered=cfg.frames - 1,
            ).result
            index += 1
            rows["segment"].append(epoch)
            rows["score"].append(result.score)
            rows["normalized"].append(result.normalized_score)
            rows["smoothed"].append(result.smoothed_score)
            rows["flagged"].append(result.is_anomaly)
            rows["status"].append(result.calibration)
            patch = result.patch
            rows["patch"].append((patch.x, patch.y, patch.w, patch.h) if patch is not None else (0, 0, 0, 0))
    view = scorer.view(name)
    assert view is not None
    return Run(np.asarray(rows["segment"]), np.asarray(rows["score"]), np.asarray(rows["normalized"]),
               np.asarray(rows["smoothed"]), np.asarray(rows["flagged"], bool), np.asarray(rows["status"]),
               np.asarray(rows["patch"]).reshape(-1, 4), view)


def runs(flags: np.ndarray) -> list[int]:
    """Lengths of the runs of consecutive True values."""
    padded = np.r_[False, np.asarray(flags, bool), False].astype(np.int8)
    edges = np.diff(padded)
    return (np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0]).tolist()


def false_alarms(run: Run, after: np.ndarray | None = None) -> dict[str, Any]:
    """Flagged frames among the frames that may alarm (after learning), their runs, per 10 minutes."""
    may = run.where("learned") if after is None else after
    flags = run.flagged[may]
    lengths = runs(flags)
    frames = int(may.sum())
    minutes = frames / FPS / 60
    events = sum(1 for n in lengths if n >= EVENT_FRAMES)
    smoothed = run.smoothed[may]
    return {
        "frames": frames,
        "minutes": round(minutes, 2),
        "flagged": int(flags.sum()),
        "flagged_share": float(flags.mean()) if frames else None,
        "runs": len(lengths),
        "longest_run": max(lengths, default=0),
        "event_runs": events,
        "event_runs_per_10_min": round(events / minutes * 10, 3) if minutes else None,
        "flagged_share_at": {f"{t:g}": float((smoothed >= t).mean()) if frames else None for t in THRESHOLDS},
        "smoothed_p99": float(np.quantile(smoothed, 0.99)) if frames else None,
        "smoothed_max": float(smoothed.max()) if frames else None,
    }


def calibration_summary(run: Run) -> dict[str, Any]:
    view = run.view.calibration
    learned = view.learned
    return {
        "status": view.status.value,
        "reason": view.reason,
        "first_statuses": _status_changes(run.status),
        "domain_z_final": None if run.view.domain_z is None else round(run.view.domain_z, 2),
        "learned": None if learned is None else {
            "frames": learned.frames, "mu": round(learned.log_mean, 4), "sigma": round(learned.log_std, 4),
            "z_p99": learned.z_p99, "z_max": learned.z_max},
        "warnings": list(run.view.warnings),
    }


def _status_changes(status: np.ndarray) -> list[list[Any]]:
    """[[status, first scored frame, frames]] for each stretch of one status."""
    out: list[list[Any]] = []
    for i, s in enumerate(status.tolist()):
        if out and out[-1][0] == s:
            out[-1][2] += 1
        else:
            out.append([s, i, 1])
    return out


# --- (i), (ii) and auto on Ped2 ---------------------------------------------------------------------


def ped2_segments(network: Network, root: Path) -> tuple[Raw, list[str], list[Raw], list[np.ndarray]]:
    """Raw scores of training video 16 and of the 12 test videos (read as `vad evaluate` reads them: no JPEG
    round trip), and the test videos' labels of their scored frames."""
    cfg = network.config
    train = {v.name: v for v in list_videos(split_folder(root, "training"))}
    learn = network.score(train["16"].read(cfg))
    videos = list_videos(split_folder(root, "testing"))
    resized = [v.read(cfg) for v in videos]
    labels = load_labels(root, videos, [len(r) for r in resized])
    raws = [network.score(r) for r in resized]
    return learn, [v.name for v in videos], raws, [label[cfg.frames - 1 :] for label in labels]


def ped2_reproduction(network: Network, learn: Raw, tests: list[Raw], labels: list[np.ndarray]) -> dict[str, Any]:
    """(i): learn mode on video 16's scored frames, then the test videos as one stream."""
    run = replay(network, [learn, *tests], choice=CalibrationChoice(CalibrationMode.LEARN),
                 policy=default_policy(frames=len(learn)), frame_size=(360, 240), name="ped2")
    test = run.segment > 0
    assert (run.status[test] == "learned").all()
    smoothed = [run.smoothed[run.segment == k + 1] for k in range(len(tests))]
    stream = protocol_metrics(smoothed, labels)
    causal = protocol_metrics([causal_protocol(r.score, network.weights.calibration) for r in tests], labels)
    learned = run.view.calibration.learned
    assert learned is not None
    return {
        "learned_from": f"training video 16, {len(learn)} scored frames",
        "learned": {"mu": learned.log_mean, "sigma": learned.log_std},
        "weights_calibration": {"mu": network.weights.calibration.log_mean,
                                "sigma": network.weights.calibration.log_std},
        "stream_micro_auc": stream["micro_auc"],
        "stream_macro_auc": stream["macro_auc"],
        "causal_micro_auc": causal["micro_auc"],
        "causal_macro_auc": causal["macro_auc"],
        "difference_points": 100 * (stream["micro_auc"] - causal["micro_auc"]),
        "flagged_normal_share": float(np.mean(np.concatenate(
            [run.flagged[run.segment == k + 1][y == 0] for k, y in enumerate(labels)]))),
        "flagged_anomalous_share": float(np.mean(np.concatenate(
            [run.flagged[run.segment == k + 1][y == 1] for k, y in enumerate(labels)]))),
    }


def learn_on_each_video(network: Network, names: list[str], tests: list[Raw], labels: list[np.ndarray],
                        first: int) -> dict[str, Any]:
    """(ii): each test video its own stream, learning on its first `first` scored frames."""
    per_video: dict[str, Any] = {}
    smoothed, model_smoothed, truth, flags = [], [], [], []
    for name, raw, label in zip(names, tests, labels, strict=True):
        run = replay(network, [raw], choice=CalibrationChoice(CalibrationMode.LEARN),
                     policy=default_policy(frames=first), frame_size=(360, 240), name=name)
        after = run.where("learned")
        causal = causal_protocol(raw.score, network.weights.calibration)
        y = label[after]
        smoothed.append(run.smoothed[after])
        model_smoothed.append(causal[after])
        truth.append(y)
        flags.append(run.flagged[after])
        per_video[name] = {
            "learning_frames_anomalous": round(float(label[~after].mean()), 3),
            "frames_after": int(after.sum()),
            "auc": _finite(roc_auc(y, run.smoothed[after])),
            "model_calibration_auc": _finite(roc_auc(y, causal[after])),
        }
    pooled_truth = np.concatenate(truth)
    pooled_flags = np.concatenate(flags)
    model_flags = np.concatenate(model_smoothed) >= network.weights.calibration.threshold
    defined = [v["auc"] for v in per_video.values() if v["auc"] is not None]
    return {
        "frames": first,
        "frames_after": {"normal": int((pooled_truth == 0).sum()), "anomalous": int((pooled_truth == 1).sum())},
        "micro_auc": roc_auc(pooled_truth, np.concatenate(smoothed)),
        "macro_auc": float(np.mean(defined)) if defined else None,
        "macro_videos": len(defined),
        "model_calibration_micro_auc_same_frames": roc_auc(pooled_truth, np.concatenate(model_smoothed)),
        "flagged_normal_share": float(pooled_flags[pooled_truth == 0].mean()),
        "flagged_anomalous_share": float(pooled_flags[pooled_truth == 1].mean()),
        "model_calibration_flagged_normal_share": float(model_flags[pooled_truth == 0].mean()),
        "model_calibration_flagged_anomalous_share": float(model_flags[pooled_truth == 1].mean()),
        "videos_learning_mostly_anomalous": sorted(n for n, v in per_video.items()
                                                   if v["learning_frames_anomalous"] > 0.5),
        "per_video": per_video,
    }


def auto_on_ped2(network: Network, names: list[str], tests: list[Raw],
                 labels: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Calibration auto (defaults) on each Ped2 test video: must stay on the model's calibration. With
    labels, also the 12 videos as one auto stream (a new epoch each) against the causal protocol."""
    out: dict[str, Any] = {}
    if labels is not None:
        run = replay(network, tests, frame_size=(360, 240), name="ped2-auto")
        stream = protocol_metrics([run.smoothed[run.segment == k] for k in range(len(tests))], labels)
        causal = protocol_metrics([causal_protocol(r.score, network.weights.calibration) for r in tests], labels)
        out["one_stream"] = {"status": run.view.calibration.status.value, "micro_auc": stream["micro_auc"],
                             "causal_micro_auc": causal["micro_auc"],
                             "difference_points": 100 * (stream["micro_auc"] - causal["micro_auc"])}
    videos = out.setdefault("videos", {})
    limit = default_policy().out_of_domain_z
    for name, raw in zip(names, tests, strict=True):
        run = replay(network, [raw], frame_size=(360, 240), name=name)
        check = default_policy().check_frames
        z = np.asarray([network.weights.calibration.background_z(b) for b in raw.background])
        # Had the stream started at any later frame of the video: the median z of its check frames.
        starts = np.asarray([np.median(z[i : i + check]) for i in range(len(z) - check + 1)])
        videos[name] = {"status": run.view.calibration.status.value,
                        "check_median_background_z": round(float(np.median(z[:check])), 2),
                        "max_background_z": round(float(z.max()), 2),
                        "worst_start_median_z": round(float(starts.max()), 2),
                        "starts_over_limit": int((starts > limit).sum()), "starts": len(starts),
                        "limit": limit}
    return out


# --- (iii) foreign normal footage -------------------------------------------------------------------


def ped2_camera_loops(root: Path, look: Look, loops: int, seed: int) -> Iterator[np.ndarray]:
    """The 16 Ped2 training videos through `look`, `loops` times, each loop in another order and at another
    light (an offset of a few grey levels, as another hour), with sensor noise: each a segment."""
    rng = np.random.default_rng(seed)
    names = [f"{i:02d}" for i in range(1, 17)]
    for loop in range(loops):
        shift = (0.0, 6.0, -6.0, 3.0, -3.0)[loop % 5]
        for name in rng.permutation(names):
            frames = foreign_ped2(read_ped2(root, "training", str(name)), look).astype(np.float32) + shift
            frames += 1.5 * rng.standard_normal(frames.shape[:3], dtype=np.float32)[..., None]
            yield np.clip(np.round(frames), 0, 255).astype(np.uint8)


def foreign_normal(network: Network, root: Path, minutes: float, progress: bool) -> dict[str, Any]:
    """(iii): auto with defaults on long normal-only foreign footage."""
    policy = default_policy()
    out: dict[str, Any] = {"policy": policy.__dict__, "event_frames": EVENT_FRAMES, "cameras": {}}
    # Enough loops that the Ped2 cameras together give `minutes` after learning.
    per_loop = 2550 - 16 * (network.config.frames - 1)
    loops = max(1, math.ceil((minutes * 60 * FPS / len(LOOKS) + policy.frames) / per_loop))
    for k, look in enumerate(LOOKS):
        raws = [network.score_frames(seg) for seg in ped2_camera_loops(root, look, loops, seed=k)]
        out["cameras"][f"ped2-{look.name}"] = _normal_report(network, raws, look.__dict__ | {"loops": loops})
        if progress:
            print(f"  ped2 {look.name}: {out['cameras'][f'ped2-{look.name}']['after_learning']}", flush=True)
    frames = network.config.frames - 1 + policy.frames + round(minutes * 60 * FPS)
    scene = SyntheticScene(frames, seed=7)
    raw = network.score(network.resize(_chunks(scene, 0, frames)))
    out["cameras"]["synthetic"] = _normal_report(network, [raw], {"frames": frames, "seed": 7})
    if progress:
        print(f"  synthetic: {out['cameras']['synthetic']['after_learning']}", flush=True)
    ped2 = [c for name, c in out["cameras"].items() if name.startswith("ped2-")]
    out["ped2_cameras_total"] = _pool(ped2)
    return out


def _chunks(scene: SyntheticScene, start: int, stop: int) -> Iterator[np.ndarray]:
    for t in range(start, stop):
        yield scene.frame(t)


def _normal_report(network: Network, raws: list[Raw], source: dict[str, Any]) -> dict[str, Any]:
    run = replay(network, raws)
    model = replay(network, raws, choice=CalibrationChoice(CalibrationMode.MODEL))
    after = run.where("learned")
    return {
        "source": source,
        "scored_frames": len(run.flagged),
        "calibration": calibration_summary(run),
        "after_learning": false_alarms(run),
        "model_calibration_same_frames": false_alarms(model, after),
        "while_learning_flagged": int(run.flagged[~after].sum()),
    }


def _pool(reports: list[dict[str, Any]]) -> dict[str, Any]:
    after = [r["after_learning"] for r in reports]
    frames = sum(a["frames"] for a in after)
    minutes = frames / FPS / 60
    events = sum(a["event_runs"] for a in after)
    return {"frames": frames, "minutes": round(minutes, 2), "flagged": sum(a["flagged"] for a in after),
            "flagged_share": sum(a["flagged"] for a in after) / max(1, frames), "event_runs": events,
            "event_runs_per_10_min": round(events / minutes * 10, 3) if minutes else None}


# --- (iv) synthetic anomalies -----------------------------------------------------------------------


#: (kind, speed in pixels per frame; None: the kind's default) of the anomalies measured.
ANOMALY_KINDS: tuple[tuple[str, float | None], ...] = (
    ("fast", None), ("against", None), ("against", 6.0), ("walker_against", None),
)


def anomaly_schedule(first: int, kinds: Sequence[tuple[str, float | None]], repeats: int,
                     gap: int = 60) -> list[SceneAnomaly]:
    """Anomalies one after another from frame `first`, each `gap` frames after the previous has left."""
    lanes = (0.55, 0.7, 0.82, 0.62)
    out, start = [], first
    probe = SyntheticScene(1, seed=0)
    for r in range(repeats):
        for kind, speed in kinds:
            anomaly = SceneAnomaly(kind, start, lane=lanes[(r + len(out)) % len(lanes)], speed=speed)  # type: ignore[arg-type]
            half = anomaly.half_size(probe.spec)[0]
            crossing = math.ceil((probe.spec.width + 2 * half) / abs(anomaly.velocity()))
            out.append(anomaly)
            start += crossing + gap
    return out


def synthetic_anomalies(network: Network, seed: int = 7, repeats: int = 4,
                        learn_frames: int | None = None) -> dict[str, Any]:
    """(iv): a synthetic camera learns (auto, defaults), then anomalies cross it one at a time."""
    policy = default_policy() if learn_frames is None else default_policy(frames=learn_frames)
    first = network.config.frames - 1 + policy.frames + 100
    schedule = anomaly_schedule(first, ANOMALY_KINDS, repeats)
    last = schedule[-1]
    frames = last.start + math.ceil((SCENE_SIZE[0] + 60) / abs(last.velocity())) + 60
    scene = SyntheticScene(frames, seed=seed, anomalies=schedule)
    raw = network.score(network.resize(_chunks(scene, 0, frames)))
    run = replay(network, [raw], policy=policy)
    offset = network.config.frames - 1  # scored frame i is frame i + offset
    events, inside = [], np.zeros(len(run.flagged), bool)
    for anomaly in schedule:
        single = SyntheticScene(1, seed=seed, anomalies=[anomaly])
        visible = [t for t in range(anomaly.start, frames) if single.anomaly_box(t) is not None]
        span = range(visible[0], visible[-1] + 1)
        # Its frames, and the CAUSAL_WINDOW - 1 after it left, whose trailing mean still holds it.
        inside[span.start - offset : min(len(inside), span.stop - offset + CAUSAL_WINDOW - 1)] = True
        flagged = [t for t in span if run.flagged[t - offset]]
        on_object = [t for t in flagged if box_overlap(tuple(run.patch[t - offset]), single.anomaly_box(t)) > 0]
        first_flag = flagged[0] if flagged else None
        events.append({
            "kind": _kind(anomaly), "appears": anomaly.start, "visible_frames": len(span),
            "speed_px_per_frame": abs(anomaly.velocity()),
            "delay_frames": None if first_flag is None else first_flag - anomaly.start,
            "delay_s": None if first_flag is None else round((first_flag - anomaly.start) / FPS, 2),
            "patch_on_object_at_first_flag": None if first_flag is None else first_flag in on_object,
            "flagged_frames": len(flagged),
            "flagged_share": round(len(flagged) / len(span), 3),
            "patch_on_object_share_of_flagged": round(len(on_object) / len(flagged), 3) if flagged else None,
            "max_smoothed": round(float(run.smoothed[[t - offset for t in span]].max()), 2),
        })
    normal = run.where("learned") & ~inside
    by_kind: dict[str, Any] = {}
    for kind in dict.fromkeys(e["kind"] for e in events):
        mine = [e for e in events if e["kind"] == kind]
        delays = [e["delay_frames"] for e in mine if e["delay_frames"] is not None]
        by_kind[kind] = {
            "events": len(mine),
            "flagged_within_1s": sum(1 for e in mine if e["delay_frames"] is not None and e["delay_frames"] < FPS),
            "patch_on_object_at_first_flag": sum(1 for e in mine if e["patch_on_object_at_first_flag"]),
            "median_delay_frames": float(np.median(delays)) if delays else None,
            "max_delay_frames": max(delays, default=None),
            "peak_smoothed": [e["max_smoothed"] for e in mine],
        }
    return {"frames": frames, "seed": seed, "calibration": calibration_summary(run), "by_kind": by_kind,
            "events": events, "false_alarms_outside_events": false_alarms(run, normal)}


def _kind(anomaly: SceneAnomaly) -> str:
    return f"{anomaly.kind} {abs(anomaly.velocity()):g} px/frame"


# --- (v) the new user's run -------------------------------------------------------------------------


def new_user_run(network: Network, root: Path) -> dict[str, Any]:
    clip = new_user_clip(root)
    raw = network.score_frames(clip)
    run = replay(network, [raw], name="new-user")
    model = replay(network, [raw], choice=CalibrationChoice(CalibrationMode.MODEL), name="new-user")
    return {
        "frames": len(clip), "scored": len(raw), "flagged": int(run.flagged.sum()),
        "calibration": calibration_summary(run),
        "model_calibration_flagged": int(model.flagged.sum()),
        "model_calibration_median_smoothed": round(float(np.median(model.smoothed)), 2),
    }


# --- report -----------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _finite(value: float) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return _finite(float(value))
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def markdown(report: dict[str, Any]) -> str:
    r = report
    p, auto, one = r["ped2"], r["ped2_auto"]["videos"], r["ped2_auto"]["one_stream"]
    lines = [
        "# Per-stream calibration on other scenes: measured",
        "",
        f"{r['date']}, {r['machine']['cpu_name']} ({r['machine']['cores']} cores, {r['threads']} torch threads), "
        f"weights `{r['weights']}` (torch fp32), `python -m bench.scenes` in {r['seconds']:.0f} s "
        f"({r['frames_scored']} frames scored at {r['scoring_fps']:.1f} fps). Threshold: the weights' "
        f"{r['threshold']} on the smoothed z; {r['fps']:g} frames per second."
        + ("" if all(v == r["date"] for v in r.get("parts_measured", {}).values()) else " Measured again later: "
           + ", ".join(f"{k} {v}" for k, v in r["parts_measured"].items() if v != r["date"]) + "."),
        "",
        "## (i) Ped2: learn on training video 16, score the test videos",
        "",
        f"- stream (learn, {p['learned_from']}): micro AUC **{p['stream_micro_auc']:.2%}**; "
        f"`vad evaluate` causal: {p['causal_micro_auc']:.2%}; difference {p['difference_points']:+.3f} points",
        f"- learned mu {p['learned']['mu']:.4f}, sigma {p['learned']['sigma']:.4f} (weights: "
        f"{p['weights_calibration']['mu']:.4f}, {p['weights_calibration']['sigma']:.4f})",
        f"- raw scores equal `vad evaluate`'s (model/evaluate.py score_videos): max difference "
        f"{r['ped2_parity_max_abs']:.2e}",
        f"- auto on each test video: {sum(v['status'] == 'model' for v in auto.values())}/{len(auto)} stay on the "
        f"model's calibration (check median background z {min(v['check_median_background_z'] for v in auto.values()):.2f}"
        f"..{max(v['check_median_background_z'] for v in auto.values()):.2f}, limit {next(iter(auto.values()))['limit']:g}); "
        f"the 12 as one auto stream: micro AUC {one['micro_auc']:.2%} ({one['difference_points']:+.3f} points)",
        f"- had a stream started at any frame of a test video instead of its first: "
        f"{sum(v.get('starts_over_limit', 0) for v in auto.values())} of {sum(v.get('starts', 0) for v in auto.values())} "
        f"start frames would have taken Ped2 for another scene (worst check median z "
        f"{max(v.get('worst_start_median_z', 0) for v in auto.values()):.2f}, video "
        f"{max(auto, key=lambda k: auto[k].get('worst_start_median_z', 0))})",
        "",
        "## (ii) Learning on the first N frames of each test video",
        "",
        "AUC over the frames after learning (normal/anomalous counts); flagged: at the default threshold; "
        "in brackets: the weights' calibration on the same frames.",
        "",
        "| N | frames after (normal/anomalous) | micro AUC | macro AUC (videos) | flagged normal | flagged anomalous "
        "| videos learning mostly anomalous |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r["learn_on_test"]:
        macro = "n/a" if e["macro_auc"] is None else f"{e['macro_auc']:.2%}"
        lines.append(
            f"| {e['frames']} | {e['frames_after']['normal']}/{e['frames_after']['anomalous']} "
            f"| {e['micro_auc']:.2%} ({e['model_calibration_micro_auc_same_frames']:.2%}) "
            f"| {macro} ({e['macro_videos']}) "
            f"| {e['flagged_normal_share']:.1%} ({e['model_calibration_flagged_normal_share']:.1%}) "
            f"| {e['flagged_anomalous_share']:.1%} ({e['model_calibration_flagged_anomalous_share']:.1%}) "
            f"| {', '.join(e['videos_learning_mostly_anomalous'])} |")
    f = r["foreign_normal"]
    lines += [
        "",
        f"## (iii) Auto with the defaults on foreign normal footage (event = run of >= {f['event_frames']} "
        "flagged frames)",
        "",
        "| camera | status | minutes after learning | flagged | share | event runs | per 10 min | longest run "
        "| weights' calibration would flag |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in f["cameras"].items():
        a, m = c["after_learning"], c["model_calibration_same_frames"]
        lines.append(f"| {name} | {c['calibration']['status']} | {a['minutes']} | {a['flagged']} | "
                     f"{a['flagged_share']:.3%} | {a['event_runs']} | {a['event_runs_per_10_min']} | {a['longest_run']} "
                     f"| {m['flagged_share']:.1%} |")
    t = f["ped2_cameras_total"]
    lines += [f"| Ped2 cameras together | | {t['minutes']} | {t['flagged']} | {t['flagged_share']:.3%} "
              f"| {t['event_runs']} | {t['event_runs_per_10_min']} | | |", "",
              "Flagged share after learning at other thresholds on the smoothed z:", "",
              "| camera | " + " | ".join(f"z >= {x:g}" for x in THRESHOLDS) + " |",
              "|---|" + "---|" * len(THRESHOLDS)]
    for name, c in f["cameras"].items():
        at = c["after_learning"]["flagged_share_at"]
        lines.append(f"| {name} | " + " | ".join(f"{at[f'{x:g}']:.3%}" for x in THRESHOLDS) + " |")
    lines.append("")
    s = r["synthetic_anomalies"]
    lines += [
        "## (iv) Synthetic anomalies after learning (auto, defaults)",
        "",
        "| kind | events | flagged within 1 s | patch on it at first flag | median delay (frames) | max delay "
        "| peak smoothed z |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, k in s["by_kind"].items():
        lines.append(f"| {kind} | {k['events']} | {k['flagged_within_1s']} | {k['patch_on_object_at_first_flag']} "
                     f"| {k['median_delay_frames']} | {k['max_delay_frames']} | {k['peak_smoothed']} |")
    fa = s["false_alarms_outside_events"]
    lines += ["", f"Outside the events (and the {r['event_frames'] - 1} frames after each, which the trailing "
              f"mean still holds): {fa['flagged']} of {fa['frames']} frames after learning flagged "
              f"({fa['event_runs']} event runs).", ""]
    n = r["new_user"]
    lines += [
        "## (v) The new user's run (200 frames, defaults)",
        "",
        f"- {n['scored']} scored, **{n['flagged']} flagged**; status {n['calibration']['status']}: "
        f"{n['calibration']['reason']}",
        f"- with the weights' calibration the same frames: {n['model_calibration_flagged']} flagged "
        f"(median smoothed z {n['model_calibration_median_smoothed']})",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scenes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data", type=Path, default=PED2, help="the UCSD Ped2 folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="minutes of foreign normal footage after learning, per kind (Ped2 cameras, synthetic)")
    parser.add_argument("--batch", type=int, default=8)
    # One thread: on the 2-core machine it measured faster than two whenever anything else ran.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 minute of foreign footage, 1 anomaly of each kind")
    parser.add_argument("--parts", type=lambda text: [p for p in text.split(",") if p], default=list(PARTS),
                        help=f"comma-separated, of {','.join(PARTS)}: measure only these, keeping the others of "
                        "OUTPUT/scenes.json")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite scenes.md from OUTPUT/scenes.json")
    args = parser.parse_args(argv)
    if set(args.parts) - set(PARTS):
        parser.error(f"--parts: choose from {','.join(PARTS)}")
    if args.markdown_only:
        (args.output / "scenes.md").write_text(markdown(json.loads((args.output / "scenes.json").read_text())))
        return
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    network = Network(args.weights, args.batch)
    root = args.data
    parts = set(args.parts)
    report: dict[str, Any] = {}
    if parts != set(PARTS):  # the other parts as the last full run measured them
        report = json.loads((args.output / "scenes.json").read_text())
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    if "ped2" in parts:
        print("(i) Ped2: scoring training video 16 and the test videos", flush=True)
        learn, names, tests, labels = ped2_segments(network, root)
        reference, _ = score_videos(network.weights, EvaluateOptions(weights=args.weights, data=root, batch_size=16))
        report["ped2_parity_max_abs"] = max(float(np.max(np.abs(a.score - b.score)))
                                            for a, b in zip(tests, reference, strict=True))
        report["ped2"] = ped2_reproduction(network, learn, tests, labels)
        print(f"  stream {report['ped2']['stream_micro_auc']:.4%} vs causal {report['ped2']['causal_micro_auc']:.4%}",
              flush=True)
        print("(ii) learning on the first frames of each test video", flush=True)
        report["learn_on_test"] = [learn_on_each_video(network, names, tests, labels, n) for n in (25, 50, 100)]
        report["ped2_auto"] = auto_on_ped2(network, names, tests, labels)
    if "foreign" in parts:
        print("(iii) foreign normal footage", flush=True)
        report["foreign_normal"] = foreign_normal(network, root, 1.0 if args.quick else args.minutes, progress=True)
    if "anomalies" in parts:
        print("(iv) synthetic anomalies", flush=True)
        report["synthetic_anomalies"] = synthetic_anomalies(network, repeats=1 if args.quick else 4)
    if "new_user" in parts:
        print("(v) the new user's run", flush=True)
        report["new_user"] = new_user_run(network, root)

    from bench.machine import machine_info

    seconds = time.perf_counter() - began
    report.update({
        "date": report.get("date", now),
        "machine": {"cpu_name": cpu_name(), **machine_info(args.threads)},
        "threads": args.threads,
        "weights": str(args.weights.relative_to(Path.cwd()) if args.weights.is_relative_to(Path.cwd())
                       else args.weights),
        "weights_sha256": network.digest,
        "fps": FPS,
        "event_frames": EVENT_FRAMES,
        "threshold": network.weights.calibration.threshold,
        "quick": args.quick,
        # When each part was last measured (a run of some parts keeps the others').
        "parts_measured": {**report.get("parts_measured", {}), **{p: now for p in parts}},
    })
    if parts == set(PARTS):
        report.update({"date": now, "frames_scored": network.frames_scored, "seconds": seconds,
                       "scoring_fps": network.frames_scored / max(network.seconds, 1e-9)})
    report = _clean(report)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "scenes.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "scenes.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
