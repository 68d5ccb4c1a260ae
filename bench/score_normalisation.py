"""Score normalisation experiments on trained weights: can a causal rescaling of the patch score close
the gap between the `causal` and `paper` protocols? Same reconstructions for every variant.

    python bench/score_normalisation.py --weights weights/ped2-lite.safetensors --data ../shared/data/ped2 \
        --out bench/results/score-ablation/normalisation.md

Variants (all use only the current frame, earlier frames of the same video, or training videos):
- spatial priors from training error maps (all 16 videos, the held-out video, videos 1-15): per
  window, the score minus, over, or standardised by the mean window error on normal frames; or the
  pixel error over the mean pixel error before the window;
- frame self-normalisation: the top window over the frame's mean / median window (power a), and the
  mean of the top-k windows;
- a per-video running baseline: log score minus 0.5 × the median (or min) log score of the video
  so far (causal), over the last N frames.
AUC of the causal protocol does not depend on the calibration (an affine map of the log score before
the trailing mean), so variants are compared on the trailing mean of log scores (or of the scores
themselves where they can be negative).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.score_ablation import error_maps  # noqa: E402
from model.backends.torch_backend import TorchBackend  # noqa: E402
from model.data import FrameSet, held_out_videos, list_videos, load_labels, split_folder  # noqa: E402
from model.evaluate import paper_protocol, protocol_metrics  # noqa: E402
from model.scoring import CAUSAL_WINDOW, box_means, trailing_mean  # noqa: E402
from model.weights import load_weights  # noqa: E402


def window_means(maps: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """(N, S, S) signed error maps -> (N, windows) mean squared error per window."""
    return box_means(maps.square(), size, stride)[0].flatten(1)


def running(values: np.ndarray, horizon: int, reduce: Callable[[np.ndarray], float]) -> np.ndarray:
    return np.array([reduce(values[max(0, i - horizon) : i + 1]) for i in range(len(values))])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="markdown table to write")
    args = p.parse_args(argv)

    w = load_weights(args.weights)
    cfg = w.config
    size, stride = cfg.patch_size, cfg.patch_stride
    recon = TorchBackend(w.model)
    test_dir, train_dir = split_folder(args.data, "testing"), split_folder(args.data, "training")
    videos = list_videos(test_dir)
    test = FrameSet.load(test_dir, cfg, videos)
    labels = [y[cfg.frames - 1 :] for y in load_labels(args.data, videos, [len(f) for f in test.frames])]
    test_maps = error_maps(recon, test)
    test_windows = [window_means(m, size, stride) for m in test_maps]
    train_videos = list_videos(train_dir)
    train_maps = dict(zip((v.name for v in train_videos), error_maps(recon, FrameSet.load(train_dir, cfg, train_videos)),
                          strict=True))
    held = [v.name for v in held_out_videos(train_videos, w.training)]

    rows: list[str] = []

    def report(name: str, scores: list[np.ndarray], logs: bool = True) -> None:
        paper = protocol_metrics([paper_protocol(s) for s in scores], labels)
        causal_input = [np.log(np.maximum(s, 1e-12)) if logs else s for s in scores]
        causal = protocol_metrics([trailing_mean(s, CAUSAL_WINDOW) for s in causal_input], labels)
        rows.append(f"| {name} | {paper['micro_auc']:.2%} | {paper['macro_auc']:.2%} "
                    f"| {causal['micro_auc']:.2%} | {causal['macro_auc']:.2%} |")
        print(rows[-1], flush=True)

    def top(values: list[torch.Tensor]) -> list[np.ndarray]:
        return [v.max(1).values.double().numpy() for v in values]

    report("top window (shipped)", top(test_windows))
    for source, names in (("all 16 training videos", list(train_maps)), (f"held-out video {', '.join(held)}", held),
                          ("training videos 1-15", [n for n in train_maps if n not in held])):
        normal = torch.cat([window_means(train_maps[n], size, stride) for n in names])
        mean, std = normal.mean(0), normal.std(0)
        pixel = torch.cat([train_maps[n].square() for n in names]).mean(0)
        report(f"{source}: window minus its normal mean", top([v - mean for v in test_windows]), logs=False)
        report(f"{source}: window over its normal mean (+1e-4)", top([v / (mean + 1e-4) for v in test_windows]))
        report(f"{source}: window standardised", top([(v - mean) / (std + 1e-6) for v in test_windows]), logs=False)
        report(f"{source}: pixel over its normal mean (+1e-4), then window",
               [box_means(m.square() / (pixel + 1e-4), size, stride)[0].flatten(1).max(1).values.double().numpy()
                for m in test_maps])
    for a in (0.25, 0.5, 1.0):
        report(f"top window / frame median window ^ {a:g}",
               [(v.max(1).values / v.median(1).values ** a).double().numpy() for v in test_windows])
    for k in (2, 5, 10):
        report(f"mean of the top {k} windows", [v.topk(k, 1).values.mean(1).double().numpy() for v in test_windows])
    logs = [np.log(s) for s in top(test_windows)]
    for horizon in (50, 100, 200, 10_000):
        for reduce_name, reduce in (("median", np.median), ("min", np.min)):
            report(f"log score − 0.5 × running {reduce_name} of the last {horizon} frames",
                   [s - 0.5 * running(s, horizon, reduce) for s in logs], logs=False)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# Score normalisation experiments\n\n`{args.weights}`, window {size}×{size} / {stride}, Ped2 test split.\n\n"
        "| variant | paper micro | paper macro | causal micro | causal macro |\n|---|---:|---:|---:|---:|\n"
        + "\n".join(rows) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
