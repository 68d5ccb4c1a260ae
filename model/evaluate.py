"""Frame-level evaluation under two protocols, always both:

- `paper`: per-video min-max normalisation of the patch score, then a centred Gaussian temporal
  smoothing (σ = PAPER_SIGMA frames), as published evaluations do. Needs whole videos.
- `causal`: what a live stream can know. The score is normalised with the calibration statistics
  stored in the weights, z = (log s − μ) / σ, and smoothed with a trailing mean over the last
  CAUSAL_WINDOW scored frames of the same video: only the frame and earlier ones are used.

The first T − 1 frames of each video have no clip and are not scored (the service answers them as
`warming`); AUC is computed over the scored frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .backends import make_backend, score_clips
from .data import DatasetError, FrameSet, frame_sort_key, list_videos, load_labels, split_folder
from .scoring import CAUSAL_WINDOW, trailing_mean, zscore
from .weights import Calibration, LoadedWeights, load_weights

PAPER_SIGMA = 3.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, y = np.asarray(scores)[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """EER: where the false-positive rate equals the miss rate (linear interpolation)."""
    fpr, tpr = roc_curve(labels, scores)
    fnr = 1 - tpr
    diff = fpr - fnr
    i = int(np.nonzero(diff >= 0)[0][0])
    if i == 0 or diff[i] == 0:
        return float(fpr[i])
    # interpolate between i-1 and i
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Centred Gaussian filter with edge replication (non-causal)."""
    if sigma <= 0 or len(x) < 2:
        return x.astype(np.float64)
    radius = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x.astype(np.float64), radius, mode="edge")
    return np.convolve(padded, k, mode="valid")


def paper_protocol(scores: np.ndarray, sigma: float = PAPER_SIGMA) -> np.ndarray:
    lo, hi = scores.min(), scores.max()
    normed = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores, dtype=np.float64)
    return gaussian_smooth(normed, sigma)


def causal_protocol(scores: np.ndarray, calibration: Calibration, window: int = CAUSAL_WINDOW) -> np.ndarray:
    return trailing_mean(zscore(np.asarray(scores), calibration.log_mean, calibration.log_std), window)


def protocol_metrics(per_video: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, float]:
    scores, truth = np.concatenate(per_video), np.concatenate(labels)
    video_aucs = [roc_auc(y, s) for s, y in zip(per_video, labels, strict=True)]
    defined = [a for a in video_aucs if not np.isnan(a)]
    normal, abnormal = scores[truth == 0], scores[truth == 1]
    return {
        "micro_auc": roc_auc(truth, scores),
        "macro_auc": float(np.mean(defined)) if defined else float("nan"),
        "macro_videos": len(defined),
        "eer": equal_error_rate(truth, scores),
        "normal_mean": float(normal.mean()) if len(normal) else float("nan"),
        "abnormal_mean": float(abnormal.mean()) if len(abnormal) else float("nan"),
        "gap": float(abnormal.mean() - normal.mean()) if len(normal) and len(abnormal) else float("nan"),
    }


@dataclass
class EvaluateOptions:
    weights: Path
    data: Path
    batch_size: int = 16
    plots: Path | None = None
    localization: bool = False
    backend: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    cache_dir: Path | None = None  # exported/quantised models (default ~/.cache/vad)
    progress: bool = False


@dataclass
class VideoScores:
    name: str
    score: np.ndarray  # raw patch score per scored frame
    mse: np.ndarray
    distance: np.ndarray | None
    top: np.ndarray  # (N, 2) top window (y, x) in model pixels
    labels: np.ndarray
    errors: list[np.ndarray] | None  # E² maps of anomalous frames, when localising


def score_videos(weights: LoadedWeights, options: EvaluateOptions) -> tuple[list[VideoScores], float]:
    """Score every test clip; returns per-video scores and the frames per second of scoring."""
    cfg = weights.config
    test_dir = split_folder(Path(options.data), "testing")
    videos = list_videos(test_dir)
    frames = FrameSet.load(test_dir, cfg, videos)
    labels = load_labels(options.data, videos, [len(f) for f in frames.frames])
    # int8 calibrates on the dataset's training/ clips the first time it is built.
    extra = {} if options.backend == "torch" else {"dataset": options.data, "cache_dir": options.cache_dir}
    backend = make_backend(weights.model, options.backend, options.precision, options.device, **extra)
    center = weights.center if options.backend == "torch" else None
    results: list[VideoScores] = []
    seconds, count = 0.0, 0
    for v, (video, label) in enumerate(zip(videos, labels, strict=True)):
        index = np.asarray([(v, t) for t in range(cfg.frames - 1, len(frames.frames[v]))])
        parts: dict[str, list[np.ndarray]] = {"score": [], "mse": [], "distance": [], "top": []}
        errors: list[np.ndarray] | None = [] if options.localization else None
        for start in range(0, len(index), options.batch_size):
            rows = index[start : start + options.batch_size]
            clips = torch.from_numpy(frames.clips(rows, cfg.frames))
            began = time.perf_counter()
            s = score_clips(backend, clips, center)
            seconds += time.perf_counter() - began
            count += len(rows)
            parts["score"].append(s.score.cpu().numpy())
            parts["mse"].append(s.mse.cpu().numpy())
            parts["top"].append(torch.stack([s.y, s.x], dim=1).cpu().numpy())
            if s.feature_distance is not None:
                parts["distance"].append(s.feature_distance.cpu().numpy())
            if errors is not None:
                for (_, t), e in zip(rows, s.errors.cpu().numpy(), strict=True):
                    if label[t]:
                        errors.append(e)
        results.append(
            VideoScores(
                name=video.name,
                score=np.concatenate(parts["score"]).astype(np.float64),
                mse=np.concatenate(parts["mse"]).astype(np.float64),
                distance=np.concatenate(parts["distance"]) if parts["distance"] else None,
                top=np.concatenate(parts["top"]),
                labels=label[cfg.frames - 1 :],
                errors=errors,
            )
        )
        if options.progress:
            print(f"  scored video {video.name} ({len(index)} clips)", flush=True)
    return results, count / max(seconds, 1e-9)


def localization(results: list[VideoScores], data: Path, weights: LoadedWeights) -> dict[str, float]:
    """How much of each anomalous frame's heatmap lies inside the ground-truth pixel masks."""
    cfg = weights.config
    mask_root = data / "testing" / "masks"
    if not mask_root.is_dir():
        raise DatasetError(f"{mask_root}: no pixel masks to localise against")
    mass, top_hit, top_inside, area = [], [], [], []
    for video in results:
        assert video.errors is not None
        anomalous = np.nonzero(video.labels)[0] + cfg.frames - 1
        files = sorted((mask_root / video.name).glob("*.png"), key=frame_sort_key)
        if len(files) < len(video.labels) + cfg.frames - 1:
            raise DatasetError(
                f"{mask_root / video.name}: {len(files)} mask files for "
                f"{len(video.labels) + cfg.frames - 1} frames"
            )
        for err, t in zip(video.errors, anomalous, strict=True):
            raw = cv2.imread(str(files[t]), cv2.IMREAD_GRAYSCALE)
            if raw is None:
                raise DatasetError(f"{files[t]}: cannot decode this mask")
            mask = cv2.resize(raw, (cfg.image_size,) * 2, interpolation=cv2.INTER_AREA) > 127
            if not mask.any():
                continue
            mass.append(float((err * mask).sum() / max(err.sum(), 1e-12)))
            y, x = video.top[t - cfg.frames + 1]
            window = mask[y : y + cfg.patch_size, x : x + cfg.patch_size]
            top_hit.append(float(window.any()))
            top_inside.append(float(window.mean()))
            area.append(float(mask.mean()))
    return {
        "frames": len(mass),
        "heatmap_mass_in_mask": float(np.mean(mass)),
        "mask_area_share": float(np.mean(area)),
        "mass_to_area_ratio": float(np.mean(mass) / max(np.mean(area), 1e-12)),
        "top_window_hits_mask": float(np.mean(top_hit)),
        "top_window_share_in_mask": float(np.mean(top_inside)),
    }


def plot_curves(results: list[VideoScores], weights: LoadedWeights, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for video in results:
        fig, ax = plt.subplots(figsize=(8, 2.6), dpi=100)
        t = np.arange(len(video.score)) + weights.config.frames - 1
        ax.fill_between(t, 0, 1, where=video.labels.astype(bool), color="tab:red", alpha=0.15,
                        step="mid", label="ground truth anomaly")
        ax.plot(t, paper_protocol(video.score), label="paper (min-max, smoothed)", color="tab:blue")
        causal = causal_protocol(video.score, weights.calibration)
        thr = weights.calibration.threshold
        lo, hi = min(causal.min(), 0.0), max(causal.max(), thr) + 1e-9
        ax.plot(t, (causal - lo) / (hi - lo), label="causal z (rescaled)", color="tab:orange")
        ax.axhline((thr - lo) / (hi - lo), color="tab:orange", ls=":", lw=1)
        ax.set_xlabel("frame")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"video {video.name}")
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        path = folder / f"{video.name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def evaluate(options: EvaluateOptions) -> dict[str, object]:
    weights = load_weights(options.weights, device=options.device)
    results, fps = score_videos(weights, options)
    labels = [r.labels for r in results]
    report: dict[str, object] = {
        "weights": str(options.weights),
        "config": weights.config.to_json(),
        "backend": options.backend,
        "precision": options.precision,
        "frames_scored": int(sum(len(r.score) for r in results)),
        "frames_anomalous": int(sum(r.labels.sum() for r in results)),
        "scoring_fps": round(fps, 2),
        "paper": protocol_metrics([paper_protocol(r.score) for r in results], labels),
        "causal": protocol_metrics([causal_protocol(r.score, weights.calibration) for r in results], labels),
        "causal_unsmoothed": protocol_metrics(
            [causal_protocol(r.score, weights.calibration, window=1) for r in results], labels
        ),
        "secondary": {
            "frame_mse_paper_micro_auc": protocol_metrics([paper_protocol(r.mse) for r in results], labels)["micro_auc"],
        },
        "threshold": weights.calibration.threshold,
    }
    if all(r.distance is not None for r in results):
        report["secondary"]["feature_distance_paper_micro_auc"] = protocol_metrics(  # type: ignore[index]
            [paper_protocol(r.distance) for r in results], labels  # type: ignore[arg-type]
        )["micro_auc"]
    if options.localization:
        report["localization"] = localization(results, options.data, weights)
    if options.plots is not None:
        report["plots"] = [str(p) for p in plot_curves(results, weights, options.plots)]
    report["per_video"] = {
        r.name: {"paper_auc": roc_auc(r.labels, paper_protocol(r.score)),
                 "causal_auc": roc_auc(r.labels, causal_protocol(r.score, weights.calibration))}
        for r in results
    }
    return _finite_or_none(report)  # type: ignore[return-value]


def _finite_or_none(value: object) -> object:
    """NaN/inf (an AUC of a video without anomalous frames) -> None, so `--json` is valid JSON."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def format_report(report: dict[str, object]) -> str:
    rows = [
        f"weights {report['weights']}  backend {report['backend']}/{report['precision']}  "
        f"{report['frames_scored']} frames scored ({report['frames_anomalous']} anomalous), "
        f"{report['scoring_fps']} fps",
        "",
        f"{'protocol':<18}{'micro AUC':>10}{'macro AUC':>10}{'EER':>8}{'normal':>9}{'abnormal':>10}{'gap':>8}",
    ]
    def fmt(value: object, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else format("n/a", spec[:-2].rstrip("."))

    for name in ("paper", "causal", "causal_unsmoothed"):
        m = report[name]
        assert isinstance(m, dict)
        rows.append(
            f"{name:<18}{fmt(m['micro_auc'], '>10.2%')}{fmt(m['macro_auc'], '>10.2%')}{fmt(m['eer'], '>8.2%')}"
            f"{fmt(m['normal_mean'], '>9.3f')}{fmt(m['abnormal_mean'], '>10.3f')}{fmt(m['gap'], '>8.3f')}"
        )
    rows.append(f"{'DESDnet (paper)':<18}{0.975:>10.2%}{'':>10}{0.067:>8.2%}")
    secondary = report["secondary"]
    assert isinstance(secondary, dict)
    rows.append("")
    rows.append("secondary scores (paper protocol, micro AUC): "
                + ", ".join(f"{k.replace('_paper_micro_auc', '')} {fmt(v, '.2%')}" for k, v in secondary.items()))
    if "localization" in report:
        loc = report["localization"]
        assert isinstance(loc, dict)
        rows.append(
            f"localisation over {loc['frames']} anomalous frames: {loc['heatmap_mass_in_mask']:.1%} of the "
            f"heatmap mass inside the masks, which cover {loc['mask_area_share']:.1%} of the frame "
            f"({loc['mass_to_area_ratio']:.1f}x); top window touches the mask in "
            f"{loc['top_window_hits_mask']:.1%} of frames"
        )
    return "\n".join(rows)
