"""`vad calibrate-backends`: time every backend/precision for a weights file on this machine, check
its scores against torch fp32, and write the *backend record* that `vad serve --backend auto` reads.

The record (JSON, format `RECORD_FORMAT`) goes to `--output`, else to
`record_path(digest, "cpu", cache_dir)` = <cache dir>/backends/<weights digest[:16]>-cpu.json, where
the service looks for it (model/backends/record.py chooses from it at serve time: the entry with the
highest batch-1 fps among those that passed parity and whose library versions match the installed
ones). A record describes one machine: its CPU, core count and instruction sets are stored.

Parity, against torch fp32 on the same clips (`PARITY_*`, defined once in model/backends/parity.py,
which the service's background autotune uses too), all of:
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
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.machine import load_average
from bench.model_bench import DEFAULT_BACKENDS, DEFAULT_PRECISIONS
from bench.report import say
from bench.timing import time_call
from model.backends import VALID, make_backend
from model.backends.artefacts import library_versions, weights_digest
from model.backends.parity import (  # noqa: F401  (parity, spearman, PARITY_*: this command's vocabulary)
    PARITY_MAX_AUC_DELTA,
    PARITY_MAX_DECISION_FLIPS,
    PARITY_MIN_SPEARMAN,
    check_entry,
    clip_scores,
    new_record,
    parity,
    spearman,
    write_record,
)
from model.backends.record import REFERENCE, choose, record_path

DEFAULT_PARITY_CLIPS = 240


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
        scores = clip_scores(recon, test_clips)
        own = Calibration.from_scores(torch.from_numpy(clip_scores(recon, calib_clips)))
        if reference is None:  # torch fp32, measured first
            reference, reference_calibration = scores, own
        check_entry(entry, scores, reference, reference_calibration, labels, own)
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
    record = new_record(
        weights=weights, digest=digest, device="cpu", threads=threads, entries=entries, parity_clips=source,
        calibration_clips=calib_source, load_average=load_average(),
    )
    path = write_record(record, record_path(digest, "cpu", cache_dir, output))
    best, why = choose(record, "cpu")
    record["choice"] = None if best is None else f"{best['backend']}/{best['precision']}"
    say(progress, f"wrote {path}; --backend auto picks "
        + (f"{best['backend']}/{best['precision']} ({best['fps']:.2f} fps)" if best else f"torch/fp32 ({why})"))
    return record, path
