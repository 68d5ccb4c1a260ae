"""`vad bench` parts (a) and (c): the model alone, per backend × precision × batch size, and the
published pipeline as baseline.

  (a) `bench_model`: `Backend.reconstruct` on a ready batch (median of timed runs after warm-up).
  (c) `bench_paper_pipeline`: eager fp32 PyTorch, batch 1, mapping encoder computed, patch score by
      the Python double loop (`patch_score_loop`).
Clips are (B, T*C, H, W) float32 in [-1, 1]; times in the rows are milliseconds, speeds frames/s.
`ModelBenchOptions` also carries the options of part (b) (bench/end_to_end.py); `bench.run.run_bench`
runs every part.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.load_generator import E2E_TRANSPORTS
from bench.report import say
from bench.timing import time_call
from model.network import DESDnet, DESDnetConfig

DEFAULT_BACKENDS = ("torch", "onnxruntime", "openvino")
DEFAULT_PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_BATCH_SIZES = (1, 4, 8)
DEFAULT_STREAMS = (1, 2, 4)


@dataclass
class ModelBenchOptions:
    config: DESDnetConfig
    weights: Path | None = None  # None: random weights (speed does not depend on their values)
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    seconds: float = 10.0  # timed seconds per measurement (at least `min_runs` runs)
    warmup: int = 2
    min_runs: int = 3
    threads: int = 0  # 0: every core
    data: Path | None = None  # dataset root: real input clips and int8 calibration
    cache_dir: Path | None = None  # None: model.backends.artefacts.default_cache_dir()
    pipeline: bool = True  # run part (c)
    pairs: tuple[tuple[str, str], ...] | None = None  # explicit (backend, precision) pairs for (a)
    end_to_end: bool = False  # run part (b) (`vad bench` turns it on unless --no-end-to-end)
    streams: tuple[int, ...] = DEFAULT_STREAMS
    e2e_seconds: float | None = None  # None: `seconds`
    e2e_fps: float | None = None  # per stream; None: closed loop
    e2e_transports: tuple[str, ...] = E2E_TRANSPORTS  # how (b) pushes frames (see bench_end_to_end)
    e2e_backend: str = "fastest"  # a backend, "auto" (the service's choice) or "fastest" (fastest (a) row, batch 1)
    e2e_precision: str = "fp32"  # with an explicit backend
    frames: Path | None = None  # frames for (b): dataset root or frame folders; None: `data`, else synthetic
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def load_model(options: ModelBenchOptions) -> DESDnet:
    """The weights file's network, else a random one of options.config (seed 0), in eval mode."""
    if options.weights is not None:
        from model.weights import load_weights

        return load_weights(options.weights).model.eval()
    torch.manual_seed(0)
    return DESDnet(options.config).eval()


def input_clips(config: DESDnetConfig, count: int, data: Path | None) -> tuple[torch.Tensor, str]:
    """`count` clips (count, T*C, H, W) and where they came from: real normal training clips from
    `data` when given, else fixed random ones, uniform in [-1, 1]."""
    if data is not None:
        from model.backends.artefacts import calibration_from_dataset

        return torch.from_numpy(calibration_from_dataset(data, config, count)), f"{data} (training clips)"
    g = torch.Generator().manual_seed(0)
    shape = (count, config.frames * config.channels, config.image_size, config.image_size)
    return torch.rand(shape, generator=g) * 2 - 1, "random uniform [-1, 1]"


def bench_paper_pipeline(
    model: DESDnet, clips: torch.Tensor, seconds: float, warmup: int = 1, min_runs: int = 3
) -> dict[str, Any]:
    """Part (c): the published pipeline, one frame at a time, on a private fp32 copy of `model`."""
    from model.scoring import error_map, patch_score_loop

    cfg = model.config
    net = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    clip = clips[:1].contiguous()
    current = clip[:, -cfg.channels :]

    @torch.no_grad()
    def step() -> None:
        out = net(clip, with_feature=True)  # mapping encoder computed, as published
        patch_score_loop(error_map(out.image, current), cfg.patch_size, cfg.patch_stride)

    @torch.no_grad()
    def model_only() -> None:
        net(clip, with_feature=True)

    with torch.no_grad():
        errors = error_map(net(clip, with_feature=True).image, current)

    timing = time_call(step, seconds, warmup, min_runs)
    # The two parts, each timed on its own (so they need not add up exactly under load).
    forward = time_call(model_only, max(seconds / 2, 0.1), 1, min_runs)
    loop = time_call(
        lambda: patch_score_loop(errors, cfg.patch_size, cfg.patch_stride), max(seconds / 4, 0.1), 1, min_runs
    )
    return {
        "description": "eager fp32 PyTorch, batch 1, mapping encoder computed, Python-loop patch score",
        "median_ms": timing.median_s * 1e3,
        "p90_ms": timing.p90_s * 1e3,
        "runs": timing.runs,
        "fps": 1.0 / timing.median_s,
        "forward_median_ms": forward.median_s * 1e3,
        "score_loop_median_ms": loop.median_s * 1e3,
    }


def bench_model(
    model: DESDnet, options: ModelBenchOptions, clips: torch.Tensor, calibration: torch.Tensor
) -> list[dict[str, Any]]:
    """Part (a): one row per backend × precision × batch size (rows with "error" when unsupported).

    clips: (N, T*C, H, W), N >= the largest batch size (else the first clip is repeated);
    calibration: (M, T*C, H, W) normal clips for int8 quantisation.
    """
    from model.backends import check_backend, make_backend

    rows: list[dict[str, Any]] = []
    reference = None
    pairs = options.pairs or tuple((b, p) for b in options.backends for p in options.precisions)
    for backend, precision in pairs:
        base = {"backend": backend, "precision": precision}
        try:
            check_backend(backend, precision)
        except ValueError:
            continue  # e.g. onnxruntime bf16, torch int8: not a combination we offer
        began = time.perf_counter()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                net = copy.deepcopy(model)  # TorchBackend changes the memory format in place
                recon = make_backend(
                    net, backend, precision, "cpu",
                    cache_dir=options.cache_dir, calibration_clips=calibration,
                    threads=options.threads or None,
                )
        except (ImportError, ValueError, RuntimeError) as exc:
            rows.append({**base, "error": f"{type(exc).__name__}: {exc}"})
            say(options.progress, f"  {backend}/{precision}: {exc}")
            continue
        build_s = time.perf_counter() - began
        notes = sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)})
        effective = recon.effective_precision
        one = recon.reconstruct(clips[:1])
        if reference is None and backend == "torch" and precision == "fp32":
            reference = one
        diff = float((one - reference).abs().max()) if reference is not None else None
        for batch in options.batch_sizes:
            batch_clips = clips[:batch] if len(clips) >= batch else clips[:1].repeat(batch, 1, 1, 1)
            timing = time_call(
                lambda r=recon, x=batch_clips: r.reconstruct(x),
                options.seconds, options.warmup, options.min_runs,
            )
            row = {
                **base,
                "effective_precision": effective,
                "batch": batch,
                "median_ms": timing.median_s * 1e3,
                "p90_ms": timing.p90_s * 1e3,
                "runs": timing.runs,
                "fps": batch / timing.median_s,
                # CPU time per frame, all threads: what the model costs the cores (e2e compares with it)
                "cpu_ms_per_frame": timing.cpu_s_per_run * 1e3 / batch if timing.cpu_s_per_run else None,
                "build_s": round(build_s, 2),
                "cached": recon.cached,
                "max_abs_diff_vs_torch_fp32": diff,
                "notes": notes,
            }
            rows.append(row)
            say(options.progress, f"  {backend:<11} {precision:<4} batch {batch:<3} {row['fps']:8.2f} fps "
                         f"(median {row['median_ms']:.1f} ms, {timing.runs} runs)")
        del recon, net
    return rows


def fastest_model_only(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(backend, precision) of the fastest part-(a) row at batch 1."""
    ones = [r for r in rows if r.get("batch") == 1 and "fps" in r]
    if not ones:
        return None
    best = max(ones, key=lambda r: r["fps"])
    return best["backend"], best["precision"]
