"""Backend "auto" without a measured record: measure the other backends while serving, then switch.

When the service starts with backend "auto" and finds no usable backend record for its weights on
this machine (model/backends/record.py), it serves at once with torch fp32 and starts one
`AutoTuner` thread (owned by the lifespan, service/context.py), which:

1. takes calibration clips: VAD_CALIBRATION_DATA's training clips when set, else the first
   `autotune_clips` clips the inference worker scores (the clips it already builds from the streams'
   ring buffers, kept as uint8 frames: exact, 4x smaller; at most MAX_COLLECT_BYTES). No dataset is
   needed;
2. adds as many copies with a synthetic anomaly of graded strength (model/backends/parity.py
   `synthetic_anomalies`), so that the scores spread from normal to anomalous as on a test set;
3. scores them with torch fp32 (the reference: the serving backend itself) and with each candidate
   (`autotune_candidates`; int8 quantises on the normal clips), calibrates each candidate on the
   normal clips so that its z-scores match torch fp32's under the weights' calibration
   (`shifted_calibration`) and applies the parity rules without labels (Spearman, alarm decisions);
4. times batch-1 inference of torch fp32 and every passing candidate, interleaved in rounds so that
   the serving load weighs on all alike (`autotune_seconds` each);
5. writes the backend record (the format `vad calibrate-backends` writes; later starts use it at once)
   to the cache (`cache_dir`/backends/..., or `backend_record`), when every candidate was measured to
   the end: one that hit the time budget or failed to build is tried again at the next start;
6. when the record's choice is not torch fp32, builds it with the serving thread count and hands it to
   the inference worker, which takes it between two batches together with its calibration
   (`InferenceWorker.switch_runtime`): no frame is dropped or reordered.

Cost: all of it runs on this one thread, with `autotune_threads` intra-op threads (torch, ONNX
Runtime, OpenVINO); the inference worker keeps its own count, so while measuring (about 50 s for the
shipped weights on 2 cores) the two compete and serving runs at about half its speed. The int8
quantisers (ONNX Runtime's calibration sessions, NNCF) pick their own thread counts for the few
seconds they run. Bounds: at most `autotune_clips` clips held (released once measured); the
measurement stops at `autotune_timeout_s`. It is not started on a GPU, nor when the cache folder is
not writable. Any failure (a backend that does not build, a missing package) is logged and leaves the
service serving. At shutdown the thread is given 5 s; a quantisation under way then finishes in the
background (the thread is a daemon and switches nothing after stop).
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.backends import Backend, make_backend, score_clips
from model.backends.artefacts import calibration_from_dataset, library_versions, weights_digest
from model.backends.cpu import cpu_has_bf16
from model.backends.parity import (
    check_entry,
    clip_scores,
    new_record,
    shifted_calibration,
    synthetic_anomalies,
    write_record,
)
from model.backends.record import REFERENCE, Choice, choose, record_path
from model.weights import Calibration

from .infer import Job
from .runtime import ModelRuntime
from .settings import ModelSettings

log = logging.getLogger("vad.autotune")

#: Most bytes of collected clips held at once (uint8), whatever `autotune_clips` says.
MAX_COLLECT_BYTES = 64 * 1024 * 1024
#: The timed rounds of step 4: each backend runs autotune_seconds / ROUNDS in each.
ROUNDS = 4

#: The values of the `autotune` label of vad_model_info: off (not backend auto, or VAD_AUTOTUNE=false),
#: record (backend auto found a usable record), then the states of a measurement.
OFF, RECORD, COLLECTING, MEASURING, SWITCHED, KEPT, FAILED, STOPPED = (
    "off", "record", "collecting", "measuring", "switched", "kept", "failed", "stopped")


def to_uint8(clip: np.ndarray) -> np.ndarray:
    """A clip in [-1, 1] (model.data.to_model_range of uint8 frames) back to its uint8 values: exact."""
    return np.rint((clip + 1.0) * 127.5).astype(np.uint8)


def from_uint8(clips: np.ndarray) -> np.ndarray:
    """uint8 clips -> float32 in [-1, 1], bit for bit what model.data.to_model_range gave."""
    return clips.astype(np.float32) / 127.5 - 1.0


# Why a candidate is left out for good on this machine (kept in the record, unlike a failure).
PERMANENT_SKIP = "not measured on this CPU: "


class ClipCollector:
    """The first `count` clips the inference worker scores (its `clip_tap`), as uint8.

    Thread-safe; `offer` returns False once it holds enough (the worker then stops calling)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._clips: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.full = threading.Event()
        self.wanted = True  # False: the clips come from elsewhere (a dataset)

    def offer(self, jobs: list[Job]) -> bool:
        with self._lock:
            if not self.wanted or self.full.is_set():
                return False
            for job in jobs:
                clip = np.asarray(job.clip)
                if self._clips and clip.shape != self._clips[0].shape:
                    continue
                if len(self._clips) < self.count and (len(self._clips) + 1) * clip.size <= MAX_COLLECT_BYTES:
                    self._clips.append(to_uint8(clip))
                else:
                    self.full.set()
                    break
            if len(self._clips) >= self.count:
                self.full.set()
            return not self.full.is_set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._clips)

    def clips(self) -> np.ndarray:
        """The collected clips as float32, once: the collector lets go of them (bounded memory after)."""
        with self._lock:
            clips, self._clips = self._clips, []
            self.wanted = False
        return from_uint8(np.stack(clips))


def _median_seconds(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def cache_is_writable(folder: Path) -> bool:
    """Whether exported models and the record can be written (a read-only container without a cache
    volume cannot: measuring there would be repeated, in vain, at every start)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            return True
    except OSError:
        return False


class AutoTuner:
    """The background measurement of one service start (see the module docstring).

    switch(runtime) hands the chosen runtime to the service and returns whether it was taken (not
    when the service is stopping); on_state(state) reports progress (the vad_model_info label)."""

    def __init__(
        self,
        runtime: ModelRuntime,
        settings: ModelSettings,
        serving_threads: int,
        switch: Callable[[ModelRuntime], bool],
        on_state: Callable[[str], None] = lambda state: None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.serving_threads = max(1, serving_threads)
        self.switch = switch
        self.on_state = on_state
        cfg = runtime.config
        clip_bytes = cfg.frames * cfg.channels * cfg.image_size * cfg.image_size
        self.collector = ClipCollector(max(1, min(settings.autotune_clips, MAX_COLLECT_BYTES // clip_bytes)))
        self.candidates = [tuple(p.split("/", 1)) for p in settings.autotune_candidates.split(",") if p]
        self.state = OFF
        self.record: dict[str, Any] | None = None
        self.summary: str | None = None
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="vad-autotune", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------
    def offer(self, jobs: list[Job]) -> bool:
        """The inference worker's clip tap (its thread): keep the first clips."""
        return self.collector.offer(jobs)

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop at the next step (a quantisation or build under way finishes in the background: the
        thread is a daemon and switches nothing after this)."""
        self._stop.set()
        self.collector.wanted = False
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _set_state(self, state: str) -> None:
        self.state = state
        try:
            self.on_state(state)
        except Exception:
            log.exception("autotune: reporting state %s failed", state)

    def _run(self) -> None:
        previous = torch.get_num_threads()  # this new thread's count: torch's global one
        try:
            self._tune()
        except BaseException:  # never let the measurement take the service down
            log.exception("autotune failed; the service keeps serving with %s/%s", *REFERENCE)
            self._set_state(FAILED)
        finally:
            self.collector.wanted = False
            torch.set_num_threads(previous)  # give later threads the global count back

    # --- the measurement ------------------------------------------------------------------------
    def _clips(self) -> tuple[np.ndarray | None, str]:
        s = self.settings
        if s.calibration_data is not None:
            try:
                clips = calibration_from_dataset(s.calibration_data, self.runtime.config, self.collector.count)
                self.collector.wanted = False
                return clips, f"{len(clips)} training clips of {s.calibration_data} (VAD_CALIBRATION_DATA)"
            except Exception as exc:
                log.warning("autotune: cannot read clips of %s (%s); collecting the streams' first clips instead",
                            s.calibration_data, exc)
        self._set_state(COLLECTING)
        log.info("backend auto: serving with %s/%s while the first %d scored clips are collected to measure "
                 "%s in the background", *REFERENCE, self.collector.count,
                 ", ".join("/".join(c) for c in self.candidates))
        while not self.collector.full.wait(0.25):
            if self._stop.is_set():
                return None, ""
        clips = self.collector.clips()
        return clips, f"the first {len(clips)} clips scored by this service"

    def _tune(self) -> None:
        clips, source = self._clips()
        if clips is None or self._stop.is_set():
            self._set_state(STOPPED)
            return
        self._set_state(MEASURING)
        s, rt = self.settings, self.runtime
        torch.set_num_threads(s.autotune_threads)  # this thread only (and threads started after it)
        deadline = time.monotonic() + s.autotune_timeout_s
        collected_s = time.monotonic() - self._began
        n = len(clips)
        both = np.concatenate([clips, synthetic_anomalies(clips, rt.config.channels)])
        weights_cal = rt.weights.calibration
        reference = clip_scores(rt.backend, both)
        torch_entry: dict[str, Any] = {
            "backend": REFERENCE[0], "precision": REFERENCE[1], "error": None, "build_s": 0.0, "notes": [],
            "effective_precision": REFERENCE[1], "versions": library_versions(*REFERENCE),
        }
        check_entry(torch_entry, reference, reference, weights_cal, None, weights_cal)
        entries: list[dict[str, Any]] = [torch_entry]
        timed: list[tuple[dict[str, Any], Backend]] = [(torch_entry, rt.backend)]
        calibrations: dict[tuple[str, str], Calibration] = {REFERENCE: weights_cal}
        model = copy.deepcopy(rt.weights.model).cpu().eval()  # exporting must not touch the serving model
        for backend, precision in self.candidates:
            if self._stop.is_set():
                self._set_state(STOPPED)
                return
            entry: dict[str, Any] = {"backend": backend, "precision": precision, "error": None}
            entries.append(entry)
            if time.monotonic() > deadline:
                entry.update(error=f"not measured: autotune_timeout_s ({s.autotune_timeout_s:g} s) was spent",
                             passed=False)
                continue
            if precision == "bf16" and not cpu_has_bf16():
                entry.update(error=f"{PERMANENT_SKIP}this CPU has no bf16 instructions", passed=False)
                continue
            began = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    recon = make_backend(model, backend, precision, "cpu", cache_dir=s.cache_dir,
                                         calibration_clips=clips, threads=s.autotune_threads)
                entry["build_s"] = round(time.perf_counter() - began, 2)
                entry["notes"] = sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)})
                entry["effective_precision"] = recon.effective_precision
                entry["versions"] = library_versions(backend, precision)
                scores = clip_scores(recon, both)
            except Exception as exc:  # a missing package, a failed export or quantisation: not this one
                entry.update(error=f"{type(exc).__name__}: {exc}", passed=False)
                log.info("autotune: %s/%s: %s", backend, precision, entry["error"])
                continue
            own = shifted_calibration(weights_cal, reference[:n], scores[:n])
            check_entry(entry, scores, reference, weights_cal, None, own)
            calibrations[(backend, precision)] = own
            if entry["passed"] and entry["effective_precision"] == precision:
                timed.append((entry, recon))
            p = entry["parity"]
            log.info("autotune: %s/%s spearman %.4f, alarm decisions differ on %.1f%% of %d clips: %s",
                     backend, precision, p["spearman"], 100 * p["decision_flips"], len(both),
                     "pass" if entry["passed"] else "FAIL (" + "; ".join(p["failed"]) + ")")
        if self._stop.is_set():
            self._set_state(STOPPED)
            return
        self._time(timed, torch.from_numpy(clips[:1]), deadline)
        if self._stop.is_set():
            self._set_state(STOPPED)
            return
        measured_s = time.monotonic() - self._began
        record = new_record(
            weights=s.weights, digest=weights_digest(model), device="cpu", threads=s.autotune_threads,
            entries=entries, parity_clips=f"{source}, and {n} of them with a synthetic anomaly",
            calibration_clips=f"{source} (each backend: torch fp32's calibration moved by its median log ratio)",
            made_by="vad serve --backend auto (background autotune while serving)",
            measured_in_s=round(measured_s, 1),
        )
        self.record = record
        path = record_path(record["weights_sha256"], "cpu", s.cache_dir, s.backend_record)
        # Only a complete measurement is kept: a backend that hit the time budget or failed to build
        # (a package installed later, a one-off export error) is measured again at the next start.
        unfinished = [f"{e['backend']}/{e['precision']}" for e in entries
                      if e.get("error") and not e["error"].startswith(PERMANENT_SKIP)]
        if unfinished:
            written = (f"the record was not written ({', '.join(unfinished)} not measured to the end); "
                       "the next start measures again")
            log.warning("autotune: %s", written)
        else:
            try:
                write_record(record, path)
                written = f"record written to {path}"
            except OSError as exc:
                written = f"the record could not be written to {path} ({exc}); the next start measures again"
                log.warning("autotune: %s", written)
        best, why = choose(record, "cpu")
        speeds = ", ".join(f"{e['backend']}/{e['precision']} {e['fps']:.1f}" for e, _ in timed if e.get("fps"))
        failed = ", ".join(f"{e['backend']}/{e['precision']}" for e in entries if not e.get("passed"))
        self.summary = (f"batch-1 fps at {s.autotune_threads} thread(s) while serving: {speeds}"
                        + (f"; not usable: {failed}" if failed else "")
                        + f"; clips collected in {collected_s:.1f} s, measured in {measured_s:.1f} s from start; "
                        + written)
        if best is None or (best["backend"], best["precision"]) == REFERENCE:
            log.info("backend auto: keeping %s/%s (%s); %s", *REFERENCE, why if best is None else "fastest",
                     self.summary)
            self._set_state(KEPT)
            return
        choice = (best["backend"], best["precision"])
        try:
            serving = make_backend(model, *choice, "cpu", cache_dir=s.cache_dir, calibration_clips=clips,
                                   threads=self.serving_threads)
            cfg = rt.config
            score_clips(serving, torch.zeros(1, cfg.frames * cfg.channels, cfg.image_size, cfg.image_size))
        except Exception as exc:
            log.warning("backend auto: %s/%s passed but failed to build for serving (%s); keeping %s/%s",
                        *choice, exc, *REFERENCE)
            self._set_state(FAILED)
            return
        new = replace(
            rt.with_backend(serving, *choice, calibrations[choice], f"{path} ({'/'.join(choice)}, autotune)",
                            s.threshold),
            auto=Choice(*choice, f"measured in the background: {self.summary}", path, measured=True),
        )
        if self._stop.is_set() or not self.switch(new):
            self._set_state(STOPPED)
            return
        log.info("backend auto: switched from %s/%s to %s/%s (%.1f vs %.1f fps) %.1f s after start; %s",
                 *REFERENCE, *choice, best["fps"], torch_entry.get("fps") or float("nan"),
                 time.monotonic() - self._began, self.summary)
        self._set_state(SWITCHED)

    def _time(self, timed: list[tuple[dict[str, Any], Backend]], x: torch.Tensor, deadline: float) -> None:
        """Batch-1 fps of each backend on clip `x`: ROUNDS rounds, each backend in turn for
        autotune_seconds / ROUNDS (at least one call each), the median call time over all rounds."""
        for _, recon in timed:
            recon.reconstruct(x)  # warm-up
        samples: list[list[float]] = [[] for _ in timed]
        share = self.settings.autotune_seconds / ROUNDS
        for _ in range(ROUNDS):
            if self._stop.is_set() or (samples[0] and time.monotonic() > deadline):
                break
            for i, (_, recon) in enumerate(timed):
                end = time.perf_counter() + share
                while True:
                    began = time.perf_counter()
                    recon.reconstruct(x)
                    done = time.perf_counter()
                    samples[i].append(done - began)
                    if done >= end:
                        break
        for (entry, _), times in zip(timed, samples, strict=True):
            median = _median_seconds(times)
            if times and median > 0:
                entry["fps"] = 1.0 / median
                entry["timed_calls"] = len(times)
