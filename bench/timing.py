"""Wall-clock and CPU timing of repeated calls: what every benchmark here reports its numbers from."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Timing:
    """Seconds per call of `runs` timed calls: median and 90th percentile (nearest rank below)."""

    median_s: float
    p90_s: float
    runs: int
    cpu_s_per_run: float | None = None  # CPU time of this process (all threads) per timed run

    @classmethod
    def of(cls, samples: list[float], cpu_s: float | None = None) -> Timing:
        """From per-call wall seconds and, optionally, the process CPU seconds they took in total."""
        ordered = sorted(samples)
        return cls(
            statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], len(ordered),
            cpu_s / len(ordered) if cpu_s is not None else None,
        )


def time_call(fn: Callable[[], object], seconds: float, warmup: int = 2, min_runs: int = 3) -> Timing:
    """Call fn `warmup` times untimed, then until `seconds` have passed and `min_runs` were timed."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    began, cpu_began = time.perf_counter(), time.process_time()
    while len(samples) < min_runs or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing.of(samples, time.process_time() - cpu_began)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads (Linux /proc); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
