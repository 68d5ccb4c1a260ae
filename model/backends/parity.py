"""Parity of a backend with torch fp32, and the backend record that `--backend auto` reads.

The one definition for both makers of a record (record.py reads it):
  - `vad calibrate-backends` (bench/calibrate_backends.py): offline, on a dataset; each backend
    calibrated on the held-out normal training videos, parity on test clips spread over every test
    video (with labels);
  - the service's background autotune (service/autotune.py): while serving, on the first clips of
    its streams (or VAD_CALIBRATION_DATA); no labels, see `synthetic_anomalies` and `shifted_calibration`.

Parity, against torch fp32 on the same clips (`PARITY_*`), all of:
  - |AUC - AUC_fp32| <= PARITY_MAX_AUC_DELTA, only when the clips have labels;
  - alarm decisions agree: on at most PARITY_MAX_DECISION_FLIPS of the clips does "z >= threshold"
    differ from torch fp32's, each side with its own calibration (a uniform bias of a quantised
    backend is calibrated away); the size of |z - z_fp32| is recorded but decides nothing;
  - Spearman rank correlation of the raw patch scores >= PARITY_MIN_SPEARMAN: a broken backend fails
    this also without labels. It needs clips whose scores spread from normal to anomalous: on a few
    seconds of normal footage alone the scores lie so close together that int8 rounding noise
    reorders them (0.96-0.98 for int8 on 64 Ped2 clips, 0.993-0.996 with `synthetic_anomalies`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..scoring import zscore
from ..weights import Calibration
from .base import Backend, score_clips
from .cpu import machine_fingerprint
from .record import RECORD_FORMAT, REFERENCE

PARITY_MIN_SPEARMAN = 0.98
PARITY_MAX_DECISION_FLIPS = 0.02
PARITY_MAX_AUC_DELTA = 0.005


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of (N,) values, ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two (N,) arrays; NaN when either is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def parity(
    scores: np.ndarray,
    reference: np.ndarray,
    reference_calibration: Any,
    labels: np.ndarray | None,
    calibration: Any | None = None,
) -> dict[str, Any]:
    """Agreement of `scores` with the torch fp32 `reference` on the same clips, and pass/fail.

    scores, reference: (N,) raw patch scores; labels: (N,) 0/1 or None. The z-scores use each side's
    calibration (`calibration` for `scores`, the reference's when None). "failed" lists the broken
    criteria (empty: passed).
    """
    s = np.maximum(np.asarray(scores, dtype=np.float64), 1e-12)
    r = np.maximum(np.asarray(reference, dtype=np.float64), 1e-12)
    rel = np.abs(s - r) / r
    own = calibration or reference_calibration
    z_own = zscore(s, own.log_mean, own.log_std)
    z_reference = zscore(r, reference_calibration.log_mean, reference_calibration.log_std)
    z_shift = np.abs(z_own - z_reference)
    flips = (z_own >= own.threshold) != (z_reference >= reference_calibration.threshold)
    out: dict[str, Any] = {
        "clips": len(s),
        "calibration": "own" if calibration is not None else "reference's",
        "spearman": spearman(s, r),
        "decision_flips": float(flips.mean()),
        "alarm_rate": float((z_own >= own.threshold).mean()),
        "alarm_rate_reference": float((z_reference >= reference_calibration.threshold).mean()),
        "p50_abs_z_shift": float(np.median(z_shift)),
        "p95_abs_z_shift": float(np.percentile(z_shift, 95)),
        "max_rel_error": float(rel.max()),
        "median_rel_error": float(np.median(rel)),
        "auc": None,
        "auc_reference": None,
        "auc_delta": None,
    }
    failed = []
    if not out["spearman"] >= PARITY_MIN_SPEARMAN:  # NaN fails too
        failed.append(f"spearman {out['spearman']:.4f} < {PARITY_MIN_SPEARMAN}")
    if out["decision_flips"] > PARITY_MAX_DECISION_FLIPS:
        failed.append(f"alarm decision differs on {out['decision_flips']:.1%} of clips > {PARITY_MAX_DECISION_FLIPS:.0%}")
    if labels is not None and 0 < labels.sum() < len(labels):
        from ..evaluate import roc_auc  # only with labels: the serve path never loads the evaluator

        out["auc"], out["auc_reference"] = roc_auc(labels, s), roc_auc(labels, r)
        out["auc_delta"] = out["auc"] - out["auc_reference"]
        if abs(out["auc_delta"]) > PARITY_MAX_AUC_DELTA:
            failed.append(f"|AUC delta| {abs(out['auc_delta']):.4f} > {PARITY_MAX_AUC_DELTA}")
    out["failed"] = failed
    return out


def check_entry(
    entry: dict[str, Any],
    scores: np.ndarray,
    reference: np.ndarray,
    reference_calibration: Calibration,
    labels: np.ndarray | None,
    calibration: Calibration,
) -> dict[str, Any]:
    """Fill a record entry's "calibration", "parity" and "passed" (torch fp32 always passes: it is the
    reference). Returns the entry."""
    entry["calibration"] = asdict(calibration)
    entry["parity"] = parity(scores, reference, reference_calibration, labels, calibration)
    entry["passed"] = (entry["backend"], entry["precision"]) == REFERENCE or not entry["parity"]["failed"]
    return entry


def clip_scores(backend: Backend, clips: torch.Tensor | np.ndarray, batch: int = 8) -> np.ndarray:
    """Patch score of every clip (N, T*C, H, W) -> (N,), `batch` clips at a time."""
    if isinstance(clips, np.ndarray):
        clips = torch.from_numpy(clips)
    parts = [score_clips(backend, clips[i : i + batch]).score.cpu().numpy() for i in range(0, len(clips), batch)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


# ---------------------------------------------------------------------------------------------
# Without a dataset: clips of the service's own streams


def synthetic_anomalies(clips: np.ndarray, channels: int, seed: int = 0) -> np.ndarray:
    """A copy of normal clips (N, T*C, S, S) in [-1, 1] with an anomaly of graded strength in the
    current frame: clip i gets a square of a quarter of the frame's side blended, with weight
    (i + 1) / N, with a vertically flipped square taken elsewhere in the same frame (an object that
    was not there, from faint to solid). Their scores spread from normal to clearly anomalous, so
    Spearman and the alarm decisions are measured over the whole range, as on a labelled test set.
    Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n, tc, s, _ = clips.shape
    out = np.array(clips, dtype=np.float32, copy=True)
    side = max(1, s // 4)
    for i in range(n):
        weight = (i + 1) / n
        y, x, y2, x2 = rng.integers(0, s - side + 1, 4)
        current = out[i, tc - channels :]
        patch = clips[i, tc - channels :, y2 : y2 + side, x2 : x2 + side][..., ::-1, :]
        current[:, y : y + side, x : x + side] = (1 - weight) * current[:, y : y + side, x : x + side] + weight * patch
    return out


def shifted_calibration(reference_calibration: Calibration, reference: np.ndarray, scores: np.ndarray) -> Calibration:
    """`reference_calibration` carried over to a backend whose scores of the same normal clips are
    `scores` (torch fp32's: `reference`): the log statistics move by the median log ratio of the two,
    so the backend's z-score of a clip equals torch fp32's up to its noise, and the threshold keeps
    its meaning. What `vad calibrate-backends` gets by scoring the held-out training videos with the
    backend, for a service that has only its own streams' clips (one parameter: a few dozen clips
    measure it well; a spread fitted on a few seconds of normal footage would mostly measure noise)."""
    r = np.log(np.maximum(np.asarray(reference, dtype=np.float64), 1e-12))
    s = np.log(np.maximum(np.asarray(scores, dtype=np.float64), 1e-12))
    shift = float(np.median(s - r)) if len(r) else 0.0
    factor = float(np.exp(shift))
    c = reference_calibration
    return Calibration(
        count=c.count, mean=c.mean * factor, std=c.std * factor, log_mean=c.log_mean + shift, log_std=c.log_std,
        quantiles={k: v * factor for k, v in c.quantiles.items()}, threshold=c.threshold,
    )


# ---------------------------------------------------------------------------------------------
# The record


def criteria() -> dict[str, Any]:
    return {
        "reference": "/".join(REFERENCE),
        "min_spearman": PARITY_MIN_SPEARMAN,
        "max_decision_flips": PARITY_MAX_DECISION_FLIPS,
        "max_abs_auc_delta": PARITY_MAX_AUC_DELTA,
        "selection": "highest batch-1 fps among passing entries",
    }


def new_record(
    *, weights: Path | str, digest: str, device: str, threads: int, entries: list[dict[str, Any]],
    parity_clips: str, calibration_clips: str, **extra: Any,
) -> dict[str, Any]:
    """A backend record (format RECORD_FORMAT) of `entries` measured on this machine."""
    return {
        "format": RECORD_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "weights": str(weights),
        "weights_sha256": digest,
        "device": device,
        "threads": threads,
        "machine": machine_fingerprint(),
        **extra,
        "parity_clips": parity_clips,
        "calibration_clips": calibration_clips,
        "criteria": criteria(),
        "entries": entries,
    }


def write_record(record: dict[str, Any], path: Path) -> Path:
    """Write `record` to `path` atomically (a reader never sees half a file). Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{time.monotonic_ns()}.tmp")
    try:
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
