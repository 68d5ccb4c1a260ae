"""Inference stage: the bounded queue of clips waiting for the model, and the one worker thread that
owns the model (service/runtime.py) and scores clips of all streams in micro-batches.

Queue drop policy, "drop-oldest-per-stream": each stream may have at most `max_pending_per_stream`
clips waiting. A newer frame evicts that stream's oldest waiting clip (reason "overload"), so scores
stay current when frames arrive faster than the model scores them, and a fast stream cannot starve
the others. Stateless requests (POST /v1/score) are refused instead (503) when
`max_pending_stateless` are already waiting: their client waits for that exact answer. The queue is
therefore bounded by max_streams * max_pending_per_stream + max_pending_stateless.

Batching: after the first clip the worker waits up to `batch_wait_ms` for more, but only while fewer
clips wait than the active producers are expected to send: each producer (a stream; stateless requests
together) that queued a clip in the last ACTIVE_PRODUCER_S seconds counts with the most clips it had
waiting or being scored at once in its current ACTIVE_PRODUCER_S window (1 for a client that waits for
each answer, 2 or more for a pipelining one). A lone client that sends one frame at a time is never held back waiting
for clips nobody is going to send; several streams, or one pipelined stream, share a forward pass.

Switching the model while serving (`InferenceWorker.switch_runtime`, used by the background autotune
of backend "auto"): the new runtime is taken between two batches, never during one, together with
whatever must change at the same boundary (the score stage's calibration); the queue is not touched,
so no frame is dropped or reordered by a switch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.backends import ClipScores, score_clips

from .domain import Overloaded
from .metrics import ServiceMetrics
from .runtime import ModelRuntime

log = logging.getLogger("vad.infer")

ACTIVE_PRODUCER_S = 1.0
BUSY_TAU_S = 3.0  # time constant of the worker's busy share


class BusyMeter:
    """The share of recent wall time the worker spent on batches (model, score stage, answers): an
    exponential average with time constant `tau` s. Written by the worker, read from any thread (each
    field replaced whole). Near 1: the model is the bottleneck; frames queue or are dropped."""

    def __init__(self, tau: float = BUSY_TAU_S) -> None:
        self.tau = tau
        self._state = (0.0, time.monotonic())  # (share, monotonic time it was computed at)
        self._running_since: float | None = None  # start of the batch under way

    def begin(self, now: float) -> None:
        self._running_since = now

    def end(self, now: float) -> None:
        began = self._running_since if self._running_since is not None else now
        self._state = (self._at(began, now), now)
        self._running_since = None

    def _at(self, began: float | None, now: float) -> float:
        """The share at `now`: idle from the last update to `began` (or to now), busy after it."""
        share, at = self._state
        start = now if began is None else max(began, at)
        share *= math.exp(-max(0.0, start - at) / self.tau)
        if began is not None:
            keep = math.exp(-max(0.0, now - start) / self.tau)
            share = share * keep + (1.0 - keep)
        return share

    def share(self, now: float | None = None) -> float:
        return self._at(self._running_since, time.monotonic() if now is None else now)


@dataclass(eq=False)
class Job:
    """One clip waiting for the model, and the frame it scores."""

    stream_id: str | None  # None: a stateless POST /v1/score request
    frame_index: int
    clip: np.ndarray  # float32 (T*C, S, S)
    frame: np.ndarray  # the decoded original frame (for heatmap overlays)
    timestamp: float
    received_at: float  # time.monotonic() at receipt
    epoch: int  # the stream ring's reset count when the clip was built
    frames_buffered: int
    # Resolves to a FrameResult (stream frames) or a streams.ClipOutcome (stateless clips).
    future: Future[Any] = field(default_factory=Future)

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.frame.shape[1], self.frame.shape[0]


class FrameQueue:
    """Bounded FIFO shared by all streams; see the module docstring for the drop policy."""

    def __init__(self, max_pending_per_stream: int, max_pending_stateless: int) -> None:
        self.max_pending_per_stream = max_pending_per_stream
        self.max_pending_stateless = max_pending_stateless
        self._jobs: deque[Job] = deque()
        self._pending: dict[str | None, int] = {}
        # producer -> (time.monotonic() of its last clip, start of its depth window, most clips waiting)
        self._activity: dict[str | None, tuple[float, float, int]] = {}
        self._running: dict[str | None, int] = {}  # clips taken by the worker and not finished, per producer
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> list[Job]:
        """Enqueue; returns the jobs evicted to make room (to be answered as dropped)."""
        with self._cond:
            if self._closed:
                return [job]
            count = self._pending.get(job.stream_id, 0)
            evicted: list[Job] = []
            if job.stream_id is None:
                if count >= self.max_pending_stateless:
                    raise Overloaded(
                        f"{count} score requests are already waiting for the model; retry shortly"
                    )
            else:
                while count >= self.max_pending_per_stream:
                    oldest = next(j for j in self._jobs if j.stream_id == job.stream_id)
                    self._jobs.remove(oldest)
                    evicted.append(oldest)
                    count -= 1
            self._jobs.append(job)
            self._pending[job.stream_id] = count + 1
            self._note_activity(job.stream_id, count + 1 + self._running.get(job.stream_id, 0))
            self._cond.notify()
            return evicted

    def take_batch(self, max_batch: int, wait_s: float) -> list[Job]:
        """Block for the first job, then wait up to wait_s for the batch to fill. [] once closed."""
        with self._cond:
            while True:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return []
                now = time.monotonic()
                deadline = now + wait_s
                wanted = min(max_batch, self._expected_clips(now))
                while len(self._jobs) < wanted:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._cond.wait(remaining)
                # remove_stream (a DELETE) may have taken every job meanwhile: [] must only mean closed.
                if self._jobs or self._closed:
                    break
            batch = [self._jobs.popleft() for _ in range(min(max_batch, len(self._jobs)))]
            for job in batch:
                self._decrement(job.stream_id)
                self._running[job.stream_id] = self._running.get(job.stream_id, 0) + 1
            return batch

    def finished(self, batch: list[Job]) -> None:
        """The worker scored `batch` (called before its answers go out, so a producer's next clip sees it)."""
        with self._cond:
            for job in batch:
                left = self._running.get(job.stream_id, 0) - 1
                if left > 0:
                    self._running[job.stream_id] = left
                else:
                    self._running.pop(job.stream_id, None)

    def _note_activity(self, key: str | None, waiting: int) -> None:
        now = time.monotonic()
        _, since, depth = self._activity.get(key, (now, now, 0))
        if now - since > ACTIVE_PRODUCER_S:  # a new window: the depth is measured afresh
            since, depth = now, 0
        self._activity[key] = (now, since, max(depth, waiting))

    def _expected_clips(self, now: float) -> int:
        """Clips the active producers are expected to have waiting at once (see the module docstring)."""
        stale = [key for key, (at, _, _) in self._activity.items() if now - at > ACTIVE_PRODUCER_S]
        for key in stale:
            del self._activity[key]
        return sum(depth for _, _, depth in self._activity.values())

    def remove_stream(self, stream_id: str) -> list[Job]:
        with self._cond:
            self._activity.pop(stream_id, None)
            removed = [j for j in self._jobs if j.stream_id == stream_id]
            if removed:
                self._jobs = deque(j for j in self._jobs if j.stream_id != stream_id)
                self._pending.pop(stream_id, None)
            return removed

    def close(self) -> list[Job]:
        """Stop accepting and wake the worker; returns what still waited."""
        with self._cond:
            self._closed = True
            left = list(self._jobs)
            self._jobs.clear()
            self._pending.clear()
            self._cond.notify_all()
            return left

    def _decrement(self, key: str | None) -> None:
        count = self._pending.get(key, 0) - 1
        if count > 0:
            self._pending[key] = count
        else:
            self._pending.pop(key, None)


BatchSink = Callable[[list[Job], ClipScores | None, BaseException | None], None]


class InferenceWorker:
    """The one thread that runs the model. Hands each batch's ClipScores (or its error) to `sink`,
    which scores, records and publishes; the worker itself knows nothing about streams."""

    def __init__(
        self,
        runtime: ModelRuntime,
        queue: FrameQueue,
        sink: BatchSink,
        metrics: ServiceMetrics,
        max_batch: int,
        batch_wait_ms: float,
        extra_latency_ms: float = 0.0,
        threads: int = 0,
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.sink = sink
        self.metrics = metrics
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000
        self.extra_latency_s = extra_latency_ms / 1000
        # torch's intra-op threads for this thread, set when it starts: a thread takes torch's global
        # count when it first runs an op, and the autotune thread lowers that for itself (0: leave it).
        self.threads = threads
        self._thread = threading.Thread(target=self._run, name="vad-inference", daemon=True)
        self.failure: str | None = None
        # Held for a whole batch (model, score stage, answers): a runtime switch waits for it.
        self._batch_lock = threading.Lock()
        # Called with each scored batch after its answers went out, until it returns False (the
        # autotune collects its calibration clips so); an error in it only logs.
        self.clip_tap: Callable[[list[Job]], bool] | None = None
        self.busy = BusyMeter()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        # The caller closes the queue (and answers what waited); this only waits for the thread.
        self._thread.join(timeout)

    def switch_runtime(self, runtime: ModelRuntime, at_switch: Callable[[ModelRuntime], None] | None = None) -> None:
        """Score the next batches with `runtime`. Waits for a batch being scored to finish (answers
        included), then runs at_switch(runtime) (e.g. the score stage's calibration) and swaps, both
        before the next batch starts: every batch is scored and normalised by one runtime."""
        with self._batch_lock:
            if at_switch is not None:
                at_switch(runtime)
            self.runtime = runtime

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            while True:
                batch = self.queue.take_batch(self.max_batch, self.batch_wait_s)
                if not batch:
                    return
                self.busy.begin(time.monotonic())
                with self._batch_lock:
                    self._score(batch)
                self.busy.end(time.monotonic())
                self._tap(batch)
        except BaseException as exc:  # a bug here must show up in /readyz, not vanish with the thread
            self.failure = f"inference worker stopped: {exc!r}"
            log.exception("inference worker stopped")
            raise

    def _tap(self, batch: list[Job]) -> None:
        tap = self.clip_tap
        if tap is None:
            return
        try:
            if not tap(batch):
                self.clip_tap = None
        except Exception:  # collecting calibration clips must never stop scoring
            log.exception("the clip collector failed; it is detached")
            self.clip_tap = None

    def _score(self, batch: list[Job]) -> None:
        clips = torch.from_numpy(np.stack([job.clip for job in batch]))
        began = time.perf_counter()
        try:
            if self.extra_latency_s:
                time.sleep(self.extra_latency_s)  # test aid: a slower model, to provoke overload
            scores = score_clips(self.runtime.backend, clips).cpu()
        except Exception as exc:  # one bad batch must not stop the worker; its frames are answered
            log.exception("inference failed for a batch of %d clips", len(batch))
            self.metrics.inference_errors.inc()
            self.queue.finished(batch)
            self.sink(batch, None, exc)
            return
        self.metrics.inference_latency.observe(time.perf_counter() - began)
        self.metrics.batch_size.observe(len(batch))
        self.queue.finished(batch)
        self.sink(batch, scores, None)
