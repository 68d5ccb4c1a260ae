"""bench/load_generator.py's pure helpers: Prometheus text sums and latency percentiles."""

from __future__ import annotations

from bench.load_generator import _metric_sum, _model_info, _percentiles


def test_metric_sum_adds_the_samples_whose_labels_match() -> None:
    text = 'a_total{stream="x",reason="overload"} 2.0\na_total{stream="y",reason="overload"} 3.0\n# a_total 9\n'
    assert _metric_sum(text, "a_total") == 5.0 and _metric_sum(text, "a_total", {"stream": "y"}) == 3.0
    info = 'vad_model_info{backend="torch",precision="fp32"} 1.0\n'
    assert _model_info(info) == {"backend": "torch", "precision": "fp32"} and _model_info("") == {}


def test_percentiles() -> None:
    assert _percentiles([]) == {"p50": None, "p99": None}
    assert _percentiles([float(x) for x in range(1, 101)]) == {"p50": 50.5, "p99": 99.0}
