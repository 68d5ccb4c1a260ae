"""The soak benchmark's leak figure: the RSS slope after warm-up."""

from __future__ import annotations

import os

import pytest

from bench.soak import Sample, process_status, slope_per_minute


def samples(rss: list[float], every_s: float = 30.0) -> list[Sample]:
    return [Sample(i * every_s, r, 10, 5, {}) for i, r in enumerate(rss)]


def test_slope_ignores_the_warm_up_and_fits_mb_per_minute() -> None:
    rising = samples([100, 300, 400] + [500 + 2 * i for i in range(20)])  # +2 MB per 30 s after warm-up
    assert slope_per_minute(rising, after_s=90) == pytest.approx(4.0)
    flat = samples([100, 300] + [500.0] * 10)
    assert slope_per_minute(flat, after_s=60) == pytest.approx(0.0)
    assert slope_per_minute(flat, after_s=10_000) is None  # too few samples


def test_process_status_reads_this_process() -> None:
    rss, fds, threads = process_status(os.getpid())
    assert rss > 10 and fds >= 3 and threads >= 1
