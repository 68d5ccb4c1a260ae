"""bench/timing.py: per-call timing and a process's CPU seconds."""

from __future__ import annotations

import os
import time

from bench.timing import Timing, process_cpu_seconds, time_call


def test_process_cpu_seconds() -> None:
    busy = time.process_time() + 0.05
    while time.process_time() < busy:
        pass
    assert process_cpu_seconds(os.getpid()) >= 0.05
    assert process_cpu_seconds(2**22 + 12345) is None  # no such process


def test_time_call_runs_warmup_untimed_and_at_least_min_runs() -> None:
    calls = []
    timing = time_call(lambda: calls.append(1), seconds=0.0, warmup=2, min_runs=3)
    assert len(calls) == 5 and timing.runs == 3
    assert 0 <= timing.median_s <= timing.p90_s and timing.cpu_s_per_run is not None
    assert Timing.of([3.0, 1.0, 2.0], cpu_s=6.0) == Timing(2.0, 3.0, 3, 2.0)
