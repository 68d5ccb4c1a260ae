from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.evaluate import (
    EvaluateOptions,
    causal_protocol,
    equal_error_rate,
    evaluate,
    format_report,
    gaussian_smooth,
    paper_protocol,
    roc_auc,
    trailing_mean,
)
from model.weights import Calibration
from tests.support.training import FRAMES, TEST_VIDEOS, TrainedRun


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie), over every pair."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_the_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 50 + 10 * seed
    labels = rng.integers(0, 2, n)
    scores = rng.integers(0, 8, n).astype(float) + labels * rng.uniform(0, 2)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_roc_auc_edge_cases() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.ones(4)) == 0.5
    assert math.isnan(roc_auc(np.zeros(5), np.arange(5.0)))


def test_equal_error_rate_known_cases() -> None:
    # Threshold 4: one negative of four passes (FPR 1/4), one positive of four is missed (FNR 1/4).
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([1, 2, 3, 4, 3.5, 5, 6, 7], dtype=float)
    assert equal_error_rate(labels, scores) == pytest.approx(0.25)
    # Crossing between two ROC points: FPR stays 1/3 while FNR falls from 1/2 to 0.
    assert equal_error_rate(np.array([0, 0, 0, 1, 1]), np.array([1, 2, 5, 3, 4.0])) == pytest.approx(1 / 3)
    assert equal_error_rate(labels, np.r_[np.zeros(4), np.ones(4)]) == 0.0
    assert equal_error_rate(labels, np.r_[np.ones(4), np.zeros(4)]) == 1.0


def test_trailing_mean_is_causal() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = trailing_mean(x, 5)
    naive = [x[max(0, t - 4) : t + 1].mean() for t in range(40)]
    np.testing.assert_allclose(y, naive, rtol=1e-12)
    for k in (0, 17, 39):
        changed = x.copy()
        changed[k] += 100.0
        z = trailing_mean(changed, 5)
        np.testing.assert_array_equal(z[:k], y[:k])  # earlier outputs do not see the future
        assert z[k] != y[k]
    np.testing.assert_allclose(trailing_mean(x, 1), x, rtol=0, atol=1e-12)


def test_gaussian_smooth_properties() -> None:
    np.testing.assert_allclose(gaussian_smooth(np.full(30, 2.5), 3.0), 2.5)  # constants stay
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    y = gaussian_smooth(x, 3.0)
    assert y.shape == x.shape and y.dtype == np.float64
    np.testing.assert_allclose(gaussian_smooth(x[::-1], 3.0), y[::-1], atol=1e-12)  # centred
    assert y.std() < x.std()  # smooths
    impulse = np.zeros(61)
    impulse[30] = 1.0
    k = gaussian_smooth(impulse, 3.0)
    t = np.arange(61) - 30
    assert k.sum() == pytest.approx(1.0) and int(k.argmax()) == 30
    assert math.sqrt((k * t**2).sum()) == pytest.approx(3.0, rel=0.01)  # its width is σ
    np.testing.assert_array_equal(gaussian_smooth(x, 0.0), x)
    changed = x.copy()
    changed[25] += 10
    assert gaussian_smooth(changed, 3.0)[20] != y[20]  # non-causal: the future leaks back


def test_protocols() -> None:
    scores = np.array([2.0, 4.0, 3.0, 10.0])
    paper = paper_protocol(scores, sigma=0)
    np.testing.assert_allclose(paper, [0.0, 0.25, 0.125, 1.0])
    np.testing.assert_array_equal(paper_protocol(np.ones(4)), np.zeros(4))
    cal = Calibration(log_mean=math.log(2.0), log_std=0.5)
    z = causal_protocol(scores, cal, window=1)
    np.testing.assert_allclose(z, (np.log(scores) - math.log(2.0)) / 0.5)
    np.testing.assert_allclose(causal_protocol(scores, cal, window=2)[1], (z[0] + z[1]) / 2)


@pytest.fixture(scope="module")
def report(trained: TrainedRun) -> dict[str, object]:
    return evaluate(EvaluateOptions(weights=trained.weights, data=trained.data, localization=True))


def test_evaluate_finds_the_synthetic_anomaly(report: dict[str, object]) -> None:
    assert report["frames_scored"] == TEST_VIDEOS * (FRAMES - 4)
    assert report["frames_anomalous"] == TEST_VIDEOS * FRAMES // 2
    for protocol in ("paper", "causal", "causal_unsmoothed"):
        metrics = report[protocol]
        assert isinstance(metrics, dict)
        assert metrics["micro_auc"] > 0.9, (protocol, metrics)
        assert metrics["eer"] < 0.2, (protocol, metrics)
        assert metrics["gap"] > 0
        assert metrics["macro_videos"] == TEST_VIDEOS
    per_video = report["per_video"]
    assert isinstance(per_video, dict) and sorted(per_video) == ["01", "02"]
    assert all(v["paper_auc"] > 0.8 and v["causal_auc"] > 0.8 for v in per_video.values())
    secondary = report["secondary"]
    assert isinstance(secondary, dict)
    assert set(secondary) == {"frame_mse_paper_micro_auc", "feature_distance_paper_micro_auc"}


def test_evaluate_localises_the_anomaly(report: dict[str, object]) -> None:
    loc = report["localization"]
    assert isinstance(loc, dict)
    assert loc["frames"] > 0
    assert loc["mass_to_area_ratio"] > 2  # error concentrates on the square
    assert loc["top_window_hits_mask"] > 0.8


def test_report_is_strict_json_and_formats(report: dict[str, object]) -> None:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the JSON report")

    text = json.dumps(report)
    assert json.loads(text, parse_constant=refuse) == report
    table = format_report(report)
    assert "paper" in table and "causal" in table and "DESDnet (paper)" in table


def test_undefined_aucs_are_null_not_nan(trained: TrainedRun, tmp_path: Path) -> None:
    """A test video without anomalous frames has no AUC: JSON null, and the table still prints."""
    import shutil

    root = shutil.copytree(trained.data, tmp_path / "d")
    truth = root / "testing" / "ground_truth.json"
    table = json.loads(truth.read_text())
    table["videos"]["02"]["anomalous"] = []
    truth.write_text(json.dumps(table))
    result = evaluate(EvaluateOptions(weights=trained.weights, data=root))
    assert result["per_video"]["02"] == {"paper_auc": None, "causal_auc": None}
    assert result["paper"]["macro_videos"] == 1
    json.loads(json.dumps(result), parse_constant=lambda name: pytest.fail(name))
    format_report(result)


def test_a_test_set_without_normal_frames_reports_nulls(trained: TrainedRun, tmp_path: Path) -> None:
    """No normal frame: AUC, EER and the normal mean are undefined; table and model card still render."""
    import shutil

    from model.card import add_evaluation

    root = shutil.copytree(trained.data, tmp_path / "d")
    truth = root / "testing" / "ground_truth.json"
    table = json.loads(truth.read_text())
    for entry in table["videos"].values():
        entry["anomalous"] = [[0, FRAMES - 1]]
    truth.write_text(json.dumps(table))
    weights = Path(shutil.copy(trained.weights, tmp_path / "w.safetensors"))
    result = evaluate(EvaluateOptions(weights=weights, data=root))
    assert result["paper"]["micro_auc"] is None and result["paper"]["normal_mean"] is None
    assert isinstance(result["paper"]["abnormal_mean"], float)
    assert "n/a" in format_report(result)
    add_evaluation(weights, result)
    assert "| paper |" in weights.with_suffix(".md").read_text()
