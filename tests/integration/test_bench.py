"""`vad bench` part (b): end to end through a real server (structure only, no speed assertions)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.load_generator import bench_end_to_end
from service.cli import main
from tests.support.serving import RunningServer


def test_end_to_end_run_against_a_running_server(vad_server: RunningServer) -> None:
    row = bench_end_to_end(vad_server.base, streams=2, seconds=1.5, fps_per_stream=20.0)
    assert row["streams"] == 2 and row["mode"] == "20 fps per stream" and len(row["per_stream"]) == 2
    assert row["scored"] > 0 and all(s["scored"] > 0 for s in row["per_stream"])
    assert row["fps"] == pytest.approx(sum(row["per_stream_fps"])) and row["fps"] > 0
    assert row["sent"] == row["scored"] + row["dropped_responses"] + sum(s["warming"] for s in row["per_stream"])
    assert row["dropped_metrics"] == row["dropped_responses"] and row["errors"] == 0
    assert 0 < row["ws_received"] <= row["ws_expected"]
    for key in ("client_latency_ms", "server_latency_ms"):
        assert 0 < row[key]["p50"] <= row[key]["p99"]
    assert row["model"]["backend"] == "torch" and row["mean_batch"] >= 1
    assert row["server_cpu_ms_per_frame"] is None and row["client_cpu_ms_per_frame"] > 0  # no server pid given
    assert vad_server.client().get("/v1/streams").json()["count"] == 0  # its streams are deleted


def test_vad_bench_runs_the_server_part_and_reports_overhead(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    code = main([
        "bench", "--weights", str(tiny_weights), "--pairs", "torch/fp32", "--batch-sizes", "1", "--seconds", "0.1",
        "--warmup", "1", "--threads", "1", "--no-pipeline", "--streams", "1,2", "--e2e-seconds", "1.5",
        "--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--quiet",
    ])
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    part = report["end_to_end"]
    assert (part["backend"], part["precision"], part["selected_by"]) == ("torch", "fp32", "fastest")
    assert [(r["transport"], r["streams"]) for r in part["runs"]] == [
        ("http", 1), ("http", 2), ("websocket", 1), ("websocket", 2)]
    for run in part["runs"]:
        mode = "closed loop" if run["transport"] == "http" else "pipelined, 2 under way"
        assert run["mode"] == mode and run["scored"] > 0 and run["ws_received"] > 0
        # Closed loop: one frame per stream in flight; pipelined: the server's window, no overflow.
        assert run["dropped_responses"] == 0 and run["errors"] == 0
        assert run["x_model_only_b1"] == run["fps"] / part["model_only_fps_b1"]
        # CPU accounting: the server subprocess and this client, per scored frame
        assert run["server_cpu_ms_per_frame"] > 0 and run["client_cpu_ms_per_frame"] > 0
        assert 0 < run["cores_busy"] <= os.cpu_count() + 0.5
    assert report["model_only"][0]["cpu_ms_per_frame"] > 0
    assert part["model_only_cpu_ms_per_frame_b1"] == report["model_only"][0]["cpu_ms_per_frame"]
    assert part["service_overhead"] == part["runs"][0]["x_model_only_b1"] > 0
    assert part["service_overhead_by_transport"] == {
        "http": part["runs"][0]["x_model_only_b1"], "websocket": part["runs"][2]["x_model_only_b1"]}
    markdown = (out / "bench.md").read_text()
    assert "## (b) end to end through the server" in markdown and "service overhead (1 stream)" in markdown
    assert "| 1 | websocket | pipelined, 2 under way |" in markdown


def test_websocket_transport_run_against_a_running_server(vad_server: RunningServer) -> None:
    marks: list[tuple[str, float, int]] = []  # phase, time, frames the server had scored

    def on_timing(phase: str) -> None:
        scored = sum(s["frames_scored"] for s in vad_server.client().get("/v1/streams").json()["data"])
        marks.append((phase, time.monotonic(), scored))

    began = time.monotonic()
    row = bench_end_to_end(vad_server.base, streams=2, seconds=1.5, transport="websocket", settle_seconds=1.0,
                           on_timing=on_timing)
    assert [m[0] for m in marks] == ["start", "end"]
    assert marks[0][1] - began >= 1.0 and marks[1][1] - marks[0][1] >= 1.5  # settled, then timed
    assert marks[0][2] > 2  # frames were scored while settling, untimed
    assert row["transport"] == "websocket" and row["mode"] == "pipelined, 2 under way"
    assert row["scored"] > 0 and all(s["scored"] > 0 for s in row["per_stream"])
    assert row["sent"] == row["scored"] + row["dropped_responses"] + sum(s["warming"] for s in row["per_stream"])
    assert row["errors"] == 0 and row["dropped_responses"] == 0
    assert 0 < row["ws_received"] <= row["ws_expected"]
    with pytest.raises(ValueError, match="closed loop only"):
        bench_end_to_end(vad_server.base, streams=1, seconds=1.0, fps_per_stream=10.0, transport="websocket")
    assert vad_server.client().get("/v1/streams").json()["count"] == 0

