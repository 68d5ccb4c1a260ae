"""Scoring ablation on trained weights: the same reconstructions, scored with other windows and
smoothings, under both protocols of `vad evaluate`.

    python bench/score_ablation.py --weights weights/ped2-lite.safetensors --data ../shared/data/ped2 \
        --out bench/results/score-ablation

The model runs once (torch fp32, as `vad evaluate` does) over every test clip and over the
held-out calibration video(s) named in the weights; each variant then recomputes its own
calibration from those held-out clips, exactly as training would have with that window. The test
set chooses nothing here: the table reports every variant, and the shipped configuration is the
row marked "shipped".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.backends.torch_backend import TorchBackend  # noqa: E402
from model.data import FrameSet, held_out_videos, list_videos, load_labels, split_folder  # noqa: E402
from model.evaluate import PAPER_SIGMA, causal_protocol, paper_protocol, protocol_metrics  # noqa: E402
from model.scoring import CAUSAL_WINDOW, error_map, patch_score  # noqa: E402
from model.weights import Calibration, load_weights  # noqa: E402


def error_maps(recon: TorchBackend, frames: FrameSet, batch: int = 16) -> list[torch.Tensor]:
    """Per video: (N, S, S) signed error maps of every clip (first T-1 frames unscored)."""
    cfg = recon.config
    out = []
    for v in range(len(frames.frames)):
        index = np.asarray([(v, t) for t in range(cfg.frames - 1, len(frames.frames[v]))])
        maps = []
        for start in range(0, len(index), batch):
            clips = torch.from_numpy(frames.clips(index[start : start + batch], cfg.frames))
            image = recon.reconstruct(clips)
            maps.append(error_map(image, clips[:, -cfg.channels :]))
        out.append(torch.cat(maps))
    return out


def scores_of(maps: list[torch.Tensor], size: int, stride: int) -> list[np.ndarray]:
    return [patch_score(m, size, stride).score.double().numpy() for m in maps]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    began = time.perf_counter()
    w = load_weights(args.weights)
    cfg = w.config
    recon = TorchBackend(w.model)
    test_dir = split_folder(args.data, "testing")
    videos = list_videos(test_dir)
    test = FrameSet.load(test_dir, cfg, videos)
    labels = [y[cfg.frames - 1 :] for y in load_labels(args.data, videos, [len(f) for f in test.frames])]
    train_dir = split_folder(args.data, "training")
    held = held_out_videos(list_videos(train_dir), w.training)
    calib = FrameSet.load(train_dir, cfg, held)
    test_maps, calib_maps = error_maps(recon, test), error_maps(recon, calib)
    print(f"reconstructed {sum(len(m) for m in test_maps)} test and {sum(len(m) for m in calib_maps)} "
          f"held-out clips in {time.perf_counter() - began:.0f} s", flush=True)

    s = cfg.image_size
    windows = [(2, 1), (4, 1), (8, 2), (16, 4), (32, 8), (64, 16), (s, 1)]
    rows: list[dict[str, Any]] = []

    def add(kind: str, size: int, stride: int, sigma: float, window: int) -> None:
        test_scores = scores_of(test_maps, size, stride)
        calibration = Calibration.from_scores(torch.from_numpy(np.concatenate(scores_of(calib_maps, size, stride))))
        paper_m = protocol_metrics([paper_protocol(x, sigma) for x in test_scores], labels)
        causal_m = protocol_metrics([causal_protocol(x, calibration, window) for x in test_scores], labels)
        shipped = (size, stride, sigma, window) == (cfg.patch_size, cfg.patch_stride, PAPER_SIGMA, CAUSAL_WINDOW)
        rows.append({
            "vary": kind, "window": size, "stride": stride, "paper_sigma": sigma, "causal_window": window,
            "shipped": shipped,
            "paper_micro_auc": paper_m["micro_auc"], "paper_macro_auc": paper_m["macro_auc"],
            "paper_eer": paper_m["eer"], "causal_micro_auc": causal_m["micro_auc"],
            "causal_macro_auc": causal_m["macro_auc"], "causal_eer": causal_m["eer"],
        })

    for size, stride in windows:
        add("score window", size, stride, PAPER_SIGMA, CAUSAL_WINDOW)
    for sigma in (0.0, 1.5, 6.0):
        add("paper smoothing σ", cfg.patch_size, cfg.patch_stride, sigma, CAUSAL_WINDOW)
    for window in (1, 3, 9, 15):
        add("causal trailing mean", cfg.patch_size, cfg.patch_stride, PAPER_SIGMA, window)

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"weights": str(args.weights), "config": json.loads(cfg.to_json()), "rows": rows,
              "seconds": round(time.perf_counter() - began, 1)}
    (args.out / "score-ablation.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"# Scoring ablation: `{args.weights}` ({cfg.image_size}×{cfg.image_size})", "",
        "Same reconstructions (torch fp32); each row recalibrates on the held-out video(s). Micro AUC / EER in %.",
        "",
        "| varied | window / stride | paper σ | causal window | paper micro AUC | paper EER | causal micro AUC | causal EER |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        win = "whole frame (frame MSE)" if r["window"] == s else f"{r['window']}×{r['window']} / {r['stride']}"
        mark = " (shipped)" if r["shipped"] else ""
        lines.append(
            f"| {r['vary']}{mark} | {win} | {r['paper_sigma']:g} | {r['causal_window']} | "
            f"{100 * r['paper_micro_auc']:.2f} | {100 * r['paper_eer']:.2f} | "
            f"{100 * r['causal_micro_auc']:.2f} | {100 * r['causal_eer']:.2f} |"
        )
    (args.out / "score-ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
