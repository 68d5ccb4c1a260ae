"""`vad bench` part (b): frames per second through a real `vad serve`, and the service's overhead.

`run_end_to_end` starts one server (bench/server.py) and runs the load generator
(bench/load_generator.py) for every transport and stream count (1, 2, 4 push streams by default,
each with a WebSocket subscriber). `end_to_end_part` does that for `vad bench`: it picks the backend
and adds each run's ratio to the model-only batch-1 fps of the same backend/precision (part (a));
at 1 stream that ratio is the "service overhead".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from bench.load_generator import bench_end_to_end
from bench.model_bench import DEFAULT_STREAMS, ModelBenchOptions, fastest_model_only
from bench.report import fmt, say
from bench.server import BenchServer
from model.network import DESDnet


def run_end_to_end(
    weights: Path,
    backend: str,
    precision: str,
    streams: tuple[int, ...] = DEFAULT_STREAMS,
    seconds: float = 10.0,
    fps_per_stream: float | None = None,
    source: Path | None = None,
    threads: int = 0,
    cache_dir: Path | None = None,
    calibration_data: Path | None = None,
    progress: bool = True,
    transports: tuple[str, ...] = ("http",),
) -> dict[str, Any]:
    """Part (b): one server (subprocess) for `weights`, then one `bench_end_to_end` run per transport
    and stream count (the websocket transport only in closed loop, i.e. without `fps_per_stream`)."""
    began = time.perf_counter()
    with BenchServer(weights, backend, precision, threads, cache_dir, calibration_data) as server:
        startup_s = time.perf_counter() - began
        runs = []
        for transport in transports:
            if transport == "websocket" and fps_per_stream is not None:
                continue
            for n in streams:
                row = bench_end_to_end(server.url, n, seconds, fps_per_stream, source, transport=transport,
                                       server_pid=server.process.pid)
                runs.append(row)
                say(progress, f"  {n} stream(s), {transport}, {row['mode']}: {row['fps']:.2f} fps scored "
                              f"(per stream {', '.join(f'{x:.2f}' for x in row['per_stream_fps'])}); "
                              f"client p50 {fmt(row['client_latency_ms']['p50'], 1)} ms, "
                              f"dropped {row['dropped_responses']}, WS {row['ws_received']}/{row['ws_expected']}")
    model = runs[0]["model"] if runs else {}
    return {
        "requested": {"backend": backend, "precision": precision},
        "backend": model.get("backend", backend),
        "precision": model.get("precision", precision),
        "server_start_s": round(startup_s, 2),
        "threads": threads,
        "note": "client and server share this machine's cores",
        "runs": runs,
    }


def end_to_end_part(model: DESDnet, options: ModelBenchOptions, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Part (b) for `vad bench`: choose the backend, start the server, run every stream count, and add
    each run's ratio to model-only batch-1 fps of the same backend/precision ("service overhead" at 1 stream).

    rows: part (a)'s rows. Without options.weights the (random) `model` is saved to a temporary
    weights file for the server. A failing server part returns {"error": ..., "runs": []}.
    """
    import tempfile

    if options.e2e_backend == "fastest":
        backend, precision = fastest_model_only(rows) or ("torch", "fp32")
    else:
        backend, precision = options.e2e_backend, options.e2e_precision
    source = options.frames or options.data
    with tempfile.TemporaryDirectory(prefix="vad-bench-") as tmp:
        weights = options.weights
        if weights is None:  # the server needs a weights file: save the random network
            from model.weights import Calibration, save_weights

            weights = Path(tmp) / "random.safetensors"
            save_weights(weights, model, None, 0.0, Calibration.from_scores(torch.linspace(0.01, 0.02, 50)),
                         {"note": "random weights written by vad bench"})
        try:
            part = run_end_to_end(
                weights, backend, precision, options.streams, options.e2e_seconds or options.seconds,
                options.e2e_fps, source, options.threads, options.cache_dir, options.data, options.progress,
                options.e2e_transports,
            )
        except Exception as exc:  # keep parts (a) and (c) when the server part fails
            say(options.progress, f"  end to end failed: {type(exc).__name__}: {exc}")
            return {"requested": {"backend": backend, "precision": precision},
                    "error": f"{type(exc).__name__}: {exc}", "runs": []}
    part["selected_by"] = options.e2e_backend
    reference = next(
        (r["fps"] for r in rows if r.get("backend") == part["backend"] and r.get("precision") == part["precision"]
         and r.get("batch") == 1 and "fps" in r),
        None,
    )
    part["model_only_fps_b1"] = reference
    part["model_only_cpu_ms_per_frame_b1"] = next(
        (r.get("cpu_ms_per_frame") for r in rows if r.get("backend") == part["backend"]
         and r.get("precision") == part["precision"] and r.get("batch") == 1 and "fps" in r),
        None,
    )
    for run in part["runs"]:
        run["x_model_only_b1"] = run["fps"] / reference if reference else None
    single = next((r for r in part["runs"] if r["streams"] == 1), None)
    part["service_overhead"] = single["x_model_only_b1"] if single else None
    part["service_overhead_by_transport"] = {
        r.get("transport", "http"): r["x_model_only_b1"] for r in part["runs"] if r["streams"] == 1
    }
    return part
