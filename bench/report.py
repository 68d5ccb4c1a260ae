"""What the benchmarks print and write: progress lines, and `vad bench`'s report, bench.json
(everything measured) and bench.md (the tables) in one folder.

The report is the dict `bench.run.run_bench` returns: machine, options, parts (a) "model_only",
(b) "end_to_end" and (c) "paper_pipeline"; times in milliseconds, speeds in frames per second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def say(enabled: bool, text: str) -> None:
    """A progress line on stdout, flushed at once; nothing when not `enabled` (--quiet)."""
    if enabled:
        print(text, flush=True)


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: floats with `digits` decimals, None as "–"."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_markdown(report: dict[str, Any]) -> str:
    """bench.md: machine and options, then the tables of parts (c), (a) and (b)."""
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
            f"{fmt(pipeline.get('score_loop_median_ms'), 1)} ms)",
            "",
        ]
    lines += [
        "## (a) model only",
        "",
        "| backend | precision | runs as | batch | fps | median ms | p90 ms | CPU ms/frame | × paper pipeline "
        "| × torch fp32 b1 | max abs diff vs torch fp32 | build s (cached) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    errors = []
    for row in report["model_only"]:
        if "error" in row:
            errors.append(f"- {row['backend']}/{row['precision']}: {row['error']}")
            continue
        lines.append(
            f"| {row['backend']} | {row['precision']} | {row['effective_precision']} | {row['batch']} "
            f"| {row['fps']:.2f} | {row['median_ms']:.1f} | {row['p90_ms']:.1f} | {fmt(row.get('cpu_ms_per_frame'), 1)} "
            f"| {fmt(row['x_paper_pipeline'])} | {fmt(row['x_torch_fp32_b1'])} "
            f"| {fmt(row['max_abs_diff_vs_torch_fp32'], 4)} | {row['build_s']:.1f} ({'yes' if row['cached'] else 'no'}) |"
        )
    notes = sorted({n for row in report["model_only"] for n in row.get("notes", [])})
    if errors or notes:
        lines += ["", "Notes:", *errors, *(f"- {n}" for n in notes)]
    lines += ["", *format_end_to_end(report.get("end_to_end")), ""]
    return "\n".join(lines)


def format_end_to_end(part: dict[str, Any] | None) -> list[str]:
    """The lines of part (b)'s section of bench.md (a note when it was not measured or failed)."""
    if not part:
        return ["(b) end to end through the server: not measured (--no-end-to-end)."]
    lines = ["## (b) end to end through the server", ""]
    if part.get("error"):
        return lines + [f"failed: {part['error']}"]
    lines += [
        f"`vad serve` ({part['backend']}/{part['precision']}, chosen by `{part.get('selected_by')}`; "
        f"{part['threads'] or 'all'} threads; started in {part['server_start_s']:.1f} s) on 127.0.0.1; "
        "one push stream per video with JPEG bytes, over HTTP (POST /v1/streams/{id}/frames, one frame per "
        "request) or over one WebSocket per stream (/v1/streams/{id}/ingest, answers in order); one WebSocket "
        "subscriber per stream; the client runs on the same cores as the server.",
        "",
    ]
    overhead = part.get("service_overhead_by_transport") or {"http": part.get("service_overhead")}
    lines += [
        "**service overhead (1 stream): "
        + ", ".join(f"{fmt(v)} over {k}" for k, v in overhead.items())
        + f"** = end-to-end fps at 1 stream / model-only fps at batch 1 of the same backend and precision "
        f"({fmt(part.get('model_only_fps_b1'))}). The model alone costs "
        f"{fmt(part.get('model_only_cpu_ms_per_frame_b1'), 1)} CPU ms per frame at batch 1 (all threads); the "
        "CPU column below is what the server and the load generator spent per scored frame, on the same cores.",
        "",
        "| streams | transport | mode | fps scored | per stream fps | client p50 / p99 ms | server p50 / p99 ms "
        "| dropped (answers / metrics) | WS received / scored | mean batch | CPU ms/frame server / client "
        "| cores busy | × model only b1 |",
        "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in part["runs"]:
        c, s = run["client_latency_ms"], run["server_latency_ms"]
        lines.append(
            f"| {run['streams']} | {run.get('transport', 'http')} | {run['mode']} | {run['fps']:.2f} "
            f"| {' / '.join(f'{x:.2f}' for x in run['per_stream_fps'])} "
            f"| {fmt(c['p50'], 1)} / {fmt(c['p99'], 1)} | {fmt(s['p50'], 1)} / {fmt(s['p99'], 1)} "
            f"| {run['dropped_responses']} / {run['dropped_metrics']:g} | {run['ws_received']} / {run['ws_expected']} "
            f"| {fmt(run['mean_batch'])} "
            f"| {fmt(run.get('server_cpu_ms_per_frame'), 1)} / {fmt(run.get('client_cpu_ms_per_frame'), 1)} "
            f"| {fmt(run.get('cores_busy'))} | {fmt(run.get('x_model_only_b1'))} |"
        )
    frames = {run["frames"] for run in part["runs"]}
    if frames:
        lines += ["", f"Frames: {'; '.join(sorted(frames))}."]
    return lines


def _fmt_load(load: Any) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "unknown"


def write_report(report: dict[str, Any], output: Path) -> tuple[Path, Path]:
    """Write output/bench.json and output/bench.md (creating `output`); return their paths."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / "bench.json", output / "bench.md"
    json_path.write_text(json.dumps(report, indent=2, default=str))
    md_path.write_text(format_markdown(report))
    return json_path, md_path
