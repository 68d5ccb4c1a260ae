"""`vad bench`: how fast the model runs, per backend, precision and batch size.

Parts of the benchmark:
  (a) `bench_model`: model-only throughput, `Reconstructor.reconstruct` on a ready batch
      (median of timed runs after warm-up) for every backend × precision × batch size.
  (b) `bench_end_to_end`: frames per second through a running server with concurrent push
      streams. NOT IMPLEMENTED yet (needs the service); its signature is documented below.
  (c) `bench_paper_pipeline`: the published pipeline as baseline: eager fp32 PyTorch, batch 1,
      mapping encoder computed, patch score by the Python double loop (`patch_score_loop`).
Every (a) row carries its speed-up over (c) and over torch fp32 at batch 1.
`write_report` writes bench.json and bench.md to the output folder.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.network import DESDnet, DESDnetConfig, count_flops

DEFAULT_BACKENDS = ("torch", "onnxruntime", "openvino")
DEFAULT_PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_BATCH_SIZES = (1, 4, 8)


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
    cache_dir: Path | None = None
    pipeline: bool = True  # run part (c)
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timing:
    median_s: float
    p90_s: float
    runs: int

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        ordered = sorted(samples)
        return cls(statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], len(ordered))


def time_call(fn: Callable[[], object], seconds: float, warmup: int = 2, min_runs: int = 3) -> Timing:
    """Call fn `warmup` times untimed, then until `seconds` have passed and `min_runs` were timed."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing.of(samples)


def machine_info(threads: int) -> dict[str, Any]:
    flags: set[str] = set()
    model_name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model_name in ("", platform.processor()):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "onnxruntime", "openvino", "nncf", "onnx"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "threads": threads,
        "isa": {
            "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags,
            "avx512_vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
            "amx": "amx_tile" in flags,
        },
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "versions": versions,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def load_model(options: ModelBenchOptions) -> DESDnet:
    if options.weights is not None:
        from model.weights import load_weights

        return load_weights(options.weights).model.eval()
    torch.manual_seed(0)
    return DESDnet(options.config).eval()


def input_clips(config: DESDnetConfig, count: int, data: Path | None) -> tuple[torch.Tensor, str]:
    """`count` clips: real normal training clips from `data` when given, else fixed random ones."""
    if data is not None:
        from model.runtimes import calibration_from_dataset

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
    """Part (a): one row per backend × precision × batch size (rows with "error" when unsupported)."""
    from model import runtimes

    rows: list[dict[str, Any]] = []
    reference = None
    for backend in options.backends:
        for precision in options.precisions:
            base = {"backend": backend, "precision": precision}
            try:
                runtimes.check_backend(backend, precision)
            except ValueError:
                continue  # e.g. onnxruntime bf16, torch int8: not a combination we offer
            began = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    net = copy.deepcopy(model)  # TorchReconstructor changes the memory format in place
                    recon = runtimes.make(
                        net, backend, precision, "cpu",
                        cache_dir=options.cache_dir, calibration_clips=calibration,
                        threads=options.threads or None,
                    )
            except (ImportError, ValueError, RuntimeError) as exc:
                rows.append({**base, "error": f"{type(exc).__name__}: {exc}"})
                _say(options, f"  {backend}/{precision}: {exc}")
                continue
            build_s = time.perf_counter() - began
            notes = sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)})
            effective = getattr(recon, "effective_precision", precision)
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
                    "build_s": round(build_s, 2),
                    "cached": bool(getattr(recon, "cached", False)),
                    "max_abs_diff_vs_torch_fp32": diff,
                    "notes": notes,
                }
                rows.append(row)
                _say(options, f"  {backend:<11} {precision:<4} batch {batch:<3} {row['fps']:8.2f} fps "
                               f"(median {row['median_ms']:.1f} ms, {timing.runs} runs)")
            del recon, net
    return rows


def bench_end_to_end(
    url: str,
    streams: int,
    seconds: float,
    fps_per_stream: float | None = None,
    source: Path | None = None,
) -> dict[str, Any]:
    """Part (b), NOT IMPLEMENTED: end-to-end throughput through a running `vad serve` at `url`.

    Intended: open `streams` concurrent push streams, each sending the frames of `source` (a video
    file or frame folder; synthetic frames when None) at `fps_per_stream` (as fast as accepted when
    None) for `seconds`; return scored frames per second in total and per stream, latency
    percentiles (push -> score), dropped/refused frames, and the batch sizes the worker formed.
    Its rows go into the same report as parts (a) and (c) under "end_to_end".
    """
    raise NotImplementedError("bench part (b), end to end through the server, is not implemented yet")


def run_bench(options: ModelBenchOptions) -> dict[str, Any]:
    threads = options.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = load_model(options)
    cfg = model.config
    info = machine_info(threads)
    _say(options, f"config {cfg.to_json()}; {threads} threads; load average {info['load_average']}")
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
        _say(options, "paper pipeline (c)")
        report["paper_pipeline"] = bench_paper_pipeline(model, clips, options.seconds, min_runs=options.min_runs)
        _say(options, f"  {report['paper_pipeline']['fps']:.2f} fps")
    _say(options, "model only (a)")
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
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    isa = ", ".join(k for k, v in m["isa"].items() if v) or "none detected"
    load = m.get("load_average")
    lines = [
        "# DESDnet model benchmark",
        "",
        *([f"**{report['label']}**", ""] if report.get("label") else []),
        f"- created {report['created']}; weights: {report['weights']}",
        f"- config: `{json.dumps(report['config'], sort_keys=True)}`",
        f"- {report['gflop_per_frame']:.1f} GFLOP/frame exported (reconstruction path), "
        f"{report['gflop_per_frame_with_mapping']:.1f} with the mapping encoder",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['threads']} threads; ISA: {isa}; "
        f"torch CPU capability {m['torch_cpu_capability']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}",
        f"- load average before {_fmt_load(load)}, after {_fmt_load(m.get('load_average_end'))}: "
        "a 1-minute load near or above the core count before the run means the numbers are contended",
        f"- input: {report['input_clips']}; int8 calibration: {report['int8_calibration']}",
        f"- {report['options']['seconds']} s per measurement after {report['options']['warmup']} warm-up runs; "
        "fps = batch / median latency",
        "",
    ]
    pipeline = report.get("paper_pipeline")
    if pipeline:
        lines += [
            "## (c) paper pipeline baseline",
            "",
            f"{pipeline['description']}: **{pipeline['fps']:.2f} fps** "
            f"(median {pipeline['median_ms']:.1f} ms per frame; timed separately: forward with mapping encoder "
            f"{pipeline['forward_median_ms']:.1f} ms, Python score loop "
            f"{_fmt(pipeline.get('score_loop_median_ms'), 1)} ms)",
            "",
        ]
    lines += [
        "## (a) model only",
        "",
        "| backend | precision | runs as | batch | fps | median ms | p90 ms | × paper pipeline | × torch fp32 b1 "
        "| max abs diff vs torch fp32 | build s (cached) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    errors = []
    for row in report["model_only"]:
        if "error" in row:
            errors.append(f"- {row['backend']}/{row['precision']}: {row['error']}")
            continue
        lines.append(
            f"| {row['backend']} | {row['precision']} | {row['effective_precision']} | {row['batch']} "
            f"| {row['fps']:.2f} | {row['median_ms']:.1f} | {row['p90_ms']:.1f} "
            f"| {_fmt(row['x_paper_pipeline'])} | {_fmt(row['x_torch_fp32_b1'])} "
            f"| {_fmt(row['max_abs_diff_vs_torch_fp32'], 4)} | {row['build_s']:.1f} ({'yes' if row['cached'] else 'no'}) |"
        )
    notes = sorted({n for row in report["model_only"] for n in row.get("notes", [])})
    if errors or notes:
        lines += ["", "Notes:", *errors, *(f"- {n}" for n in notes)]
    lines += ["", "(b) end to end through the server: not measured yet.", ""]
    return "\n".join(lines)


def _fmt_load(load: Any) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "unknown"


def write_report(report: dict[str, Any], output: Path) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / "bench.json", output / "bench.md"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    md_path.write_text(format_markdown(report))
    return json_path, md_path


def _say(options: ModelBenchOptions, text: str) -> None:
    if options.progress:
        print(text, flush=True)
