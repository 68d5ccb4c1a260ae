"""`vad bench`: every part in order, (c) the paper pipeline, (a) the model alone, (b) end to end.

`run_bench(options)` returns the report dict that bench/report.py writes: every (a) row carries its
speed-up over (c) ("x_paper_pipeline") and over torch fp32 at batch 1 ("x_torch_fp32_b1"); every (b)
run its ratio to model-only batch 1 ("x_model_only_b1").
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench.end_to_end import end_to_end_part
from bench.machine import load_average, machine_info
from bench.model_bench import ModelBenchOptions, bench_model, bench_paper_pipeline, input_clips, load_model
from bench.report import say
from model.network import count_flops


def run_bench(options: ModelBenchOptions) -> dict[str, Any]:
    """Run the parts `options` ask for on `options.threads` threads (0: every core)."""
    threads = options.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = load_model(options)
    cfg = model.config
    info = machine_info(threads)
    say(options.progress, f"config {cfg.to_json()}; {threads} threads; load average {info['load_average']}")
    clips, clip_source = input_clips(cfg, max(options.batch_sizes), options.data)
    calibration, calibration_source = input_clips(cfg, 32, options.data)
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": json.loads(cfg.to_json()),
        "weights": str(options.weights) if options.weights else "random (seed 0)",
        "gflop_per_frame": count_flops(model, with_feature=False) / 1e9,
        "gflop_per_frame_with_mapping": count_flops(model, with_feature=True) / 1e9,
        "input_clips": clip_source,
        "int8_calibration": calibration_source,
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(options).items()
            if k not in ("config", "extra")
        },
        "machine": info,
        **options.extra,
    }
    if options.pipeline:
        say(options.progress, "paper pipeline (c)")
        report["paper_pipeline"] = bench_paper_pipeline(model, clips, options.seconds, min_runs=options.min_runs)
        say(options.progress, f"  {report['paper_pipeline']['fps']:.2f} fps")
    say(options.progress, "model only (a)")
    rows = bench_model(model, options, clips, calibration)
    torch_b1 = next(
        (r["fps"] for r in rows if r.get("backend") == "torch" and r.get("precision") == "fp32" and r.get("batch") == 1),
        None,
    )
    baseline = report.get("paper_pipeline", {}).get("fps")
    for row in rows:
        if "fps" in row:
            row["x_paper_pipeline"] = row["fps"] / baseline if baseline else None
            row["x_torch_fp32_b1"] = row["fps"] / torch_b1 if torch_b1 else None
    report["model_only"] = rows
    if options.end_to_end:
        say(options.progress, "end to end through the server (b)")
        report["end_to_end"] = end_to_end_part(model, options, rows)
    report["machine"]["load_average_end"] = load_average()
    return report
