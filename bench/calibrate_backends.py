"""`vad calibrate-backends`: time every backend/precision for a weights file on this machine, check
its scores against torch fp32, and write the *backend record* that `vad serve --backend auto` reads.

The record (JSON, format `RECORD_FORMAT`) goes to `--output`, else to
`record_path(digest, "cpu", cache_dir)` = <cache dir>/backends/<weights digest[:16]>-cpu.json, where
the service looks for it (model/backends/record.py chooses from it at serve time: the entry with the
highest batch-1 fps among those that passed parity and whose library versions match the installed
ones). A record describes one machine: its CPU, core count and instruction sets are stored.

Parity, against torch fp32 on the same clips (`PARITY_*` below), all of:
  - |AUC - AUC_fp32| <= PARITY_MAX_AUC_DELTA on the parity clips, when the dataset has labels
    (the detection quality; README's parity table gives the same on the whole test set);
  - alarm decisions agree: on at most PARITY_MAX_DECISION_FLIPS of the clips does
    "z >= threshold" differ from torch fp32's, z = (log score - mu) / sigma. Each backend uses its
    own calibration and threshold, measured here as training did (the held-out normal training
    videos named in the weights, scored by that backend), so a uniform bias of a quantised backend
    is calibrated away (torch fp32, measured the same way, is the reference; it serves with the
    weights' calibration, which training measured identically). The size of |z - z_fp32| itself
    is recorded but decides nothing: the calibration's sigma is small, so z of clearly anomalous
    clips (z of 10 to 30) differs by several units between backends without changing any alarm;
  - Spearman rank correlation of the raw patch scores >= PARITY_MIN_SPEARMAN: a broken backend
    fails this also on a dataset without labels.
Speed: frames per second of `Backend.reconstruct` at batch 1 ("fps") and 4 ("fps_batch4").
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.machine import load_average
from bench.model_bench import DEFAULT_BACKENDS, DEFAULT_PRECISIONS
from bench.report import say
from bench.timing import time_call
from model.backends import VALID, Backend, make_backend, score_clips
from model.backends.artefacts import library_versions, weights_digest
from model.backends.record import RECORD_FORMAT, REFERENCE, choose, machine_fingerprint, record_path
from model.scoring import zscore

PARITY_MIN_SPEARMAN = 0.98
PARITY_MAX_DECISION_FLIPS = 0.02
PARITY_MAX_AUC_DELTA = 0.005
DEFAULT_PARITY_CLIPS = 240


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
    from model.evaluate import roc_auc

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
        out["auc"], out["auc_reference"] = roc_auc(labels, s), roc_auc(labels, r)
        out["auc_delta"] = out["auc"] - out["auc_reference"]
        if abs(out["auc_delta"]) > PARITY_MAX_AUC_DELTA:
            failed.append(f"|AUC delta| {abs(out['auc_delta']):.4f} > {PARITY_MAX_AUC_DELTA}")
    out["failed"] = failed
    return out


def parity_clips(data: Path, config: Any, count: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """`count` test clips spread evenly over every test video of `data` (with labels when present)."""
    from model.data import DatasetError, FrameSet, list_videos, load_labels, split_folder

    test_dir = split_folder(Path(data), "testing")
    videos = list_videos(test_dir)
    frames = FrameSet.load(test_dir, config, videos)
    index = frames.clip_index(config.frames)
    picks = index[np.unique(np.linspace(0, len(index) - 1, min(count, len(index))).round().astype(np.int64))]
    try:
        labels_per_video = load_labels(Path(data), videos, [len(f) for f in frames.frames])
        labels = np.asarray([labels_per_video[v][t] for v, t in picks])
    except DatasetError:
        labels = None
    return frames.clips(picks, config.frames), labels, f"{len(picks)} clips of {test_dir}"


def calibration_clips(data: Path, config: Any, training: dict[str, Any]) -> tuple[torch.Tensor, str]:
    """The clips training calibrated on: the held-out normal videos its metadata names, read from
    `data`'s training split (the last training video when the weights name none)."""
    from model.data import FrameSet, held_out_videos, list_videos, split_folder

    train_dir = split_folder(Path(data), "training")
    chosen = held_out_videos(list_videos(train_dir), training)
    frames = FrameSet.load(train_dir, config, chosen)
    index = frames.clip_index(config.frames)
    names = ", ".join(v.name for v in chosen)
    return torch.from_numpy(frames.clips(index, config.frames)), f"{len(index)} clips of {train_dir} ({names})"


def _scores(recon: Backend, clips: torch.Tensor, batch: int = 8) -> np.ndarray:
    """Patch score of every clip (N, T*C, H, W) -> (N,), `batch` clips at a time."""

    parts = [score_clips(recon, clips[i : i + batch]).score.cpu().numpy() for i in range(0, len(clips), batch)]
    return np.concatenate(parts)


def calibrate_backends(
    weights: Path,
    data: Path,
    backends: tuple[str, ...] = DEFAULT_BACKENDS,
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS,
    seconds: float = 3.0,
    clips: int = DEFAULT_PARITY_CLIPS,
    threads: int = 0,
    cache_dir: Path | None = None,
    output: Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], Path]:
    """Measure and check every backend/precision for `weights` on this machine; write the record.

    data: dataset root (parity on `clips` clips of testing/, int8 and per-backend calibration on
    training/); threads 0: every core; cache_dir None: `default_cache_dir()`; output None:
    `record_path(digest, "cpu", cache_dir)`. Returns the record and the path it was written to.
    """
    from model.weights import Calibration, load_weights

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    loaded = load_weights(weights)
    model = loaded.model.eval()
    digest = weights_digest(model)
    array, labels, source = parity_clips(data, model.config, clips)
    test_clips = torch.from_numpy(array)
    calib_clips, calib_source = calibration_clips(data, model.config, loaded.training)
    say(progress, f"calibration clips: {calib_source}")
    say(progress, f"parity clips: {source}" + ("" if labels is None else f" ({int(labels.sum())} anomalous)"))
    pairs = [REFERENCE] + [
        (b, p) for b in backends for p in precisions if (b, p) != REFERENCE and p in VALID.get(b, ())
    ]
    reference: np.ndarray | None = None
    reference_calibration = loaded.calibration
    entries: list[dict[str, Any]] = []
    for backend, precision in pairs:
        entry: dict[str, Any] = {"backend": backend, "precision": precision, "error": None}
        began = time.perf_counter()
        try:
            extra = {} if backend == "torch" else {"cache_dir": cache_dir, "dataset": data, "threads": threads}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                recon = make_backend(copy.deepcopy(model), backend, precision, "cpu", **extra)
        except (ImportError, ValueError, RuntimeError) as exc:
            entry.update(error=f"{type(exc).__name__}: {exc}", passed=False)
            entries.append(entry)
            say(progress, f"  {backend}/{precision}: {entry['error']}")
            continue
        entry["build_s"] = round(time.perf_counter() - began, 2)
        entry["notes"] = sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)})
        entry["effective_precision"] = recon.effective_precision
        entry["versions"] = library_versions(backend, precision)
        scores = _scores(recon, test_clips)
        own = Calibration.from_scores(torch.from_numpy(_scores(recon, calib_clips)))
        entry["calibration"] = asdict(own)
        if reference is None:  # torch fp32, measured first
            reference, reference_calibration = scores, own
        entry["parity"] = parity(scores, reference, reference_calibration, labels, own)
        entry["passed"] = (backend, precision) == REFERENCE or not entry["parity"]["failed"]
        for batch, key in ((1, "fps"), (4, "fps_batch4")):
            x = test_clips[:batch]
            timing = time_call(lambda r=recon, x=x: r.reconstruct(x), seconds, 2, 3)
            entry[key] = batch / timing.median_s
        entries.append(entry)
        p = entry["parity"]
        say(progress, f"  {backend:<11} {precision:<4} {entry['fps']:7.2f} fps (batch 4: {entry['fps_batch4']:.2f}); "
            f"spearman {p['spearman']:.4f}, decisions differ {p['decision_flips']:.1%}"
            + (f", AUC delta {p['auc_delta']:+.4f}" if p["auc_delta"] is not None else "")
            + ("  PASS" if entry["passed"] else f"  FAIL ({'; '.join(p['failed'])})")
            + (f"  [runs as {entry['effective_precision']}]" if entry["effective_precision"] != precision else ""))
        del recon
    record = {
        "format": RECORD_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "weights": str(weights),
        "weights_sha256": digest,
        "device": "cpu",
        "threads": threads,
        "machine": machine_fingerprint(),
        "load_average": load_average(),
        "parity_clips": source,
        "calibration_clips": calib_source,
        "criteria": {
            "reference": "/".join(REFERENCE),
            "min_spearman": PARITY_MIN_SPEARMAN,
            "max_decision_flips": PARITY_MAX_DECISION_FLIPS,
            "max_abs_auc_delta": PARITY_MAX_AUC_DELTA,
            "selection": "highest batch-1 fps among passing entries",
        },
        "entries": entries,
    }
    path = record_path(digest, "cpu", cache_dir, output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)
    best, why = choose(record, "cpu")
    record["choice"] = None if best is None else f"{best['backend']}/{best['precision']}"
    say(progress, f"wrote {path}; --backend auto picks "
        + (f"{best['backend']}/{best['precision']} ({best['fps']:.2f} fps)" if best else f"torch/fp32 ({why})"))
    return record, path
