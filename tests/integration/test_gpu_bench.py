"""bench/gpu_bench.py: the GPU benchmark script runs on a CPU too (no GPU in CI), and its per-tick
compute path (device rings, gathered clips, score and heatmap on the device) scores exactly as the
service's path does. The CUDA-only variants (two streams, CUDA graphs) need a GPU to run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

from model.backends import score_clips
from model.backends.torch_backend import TorchBackend
from model.network import DESDnet
from tests.support.data import TINY

ROOT = Path(__file__).resolve().parents[2]


def load_script():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tick_scores_every_stream_as_the_service_does() -> None:
    gpu_bench = load_script()
    torch.manual_seed(0)
    model = DESDnet(TINY).eval()
    tick = gpu_bench.StreamTick(model, streams=3, precision="fp32", concurrent=True, device=torch.device("cpu"))
    before = tick.ring.clone()
    tick.tick()
    # The ring moved on by one frame per stream, the new frame last.
    assert torch.equal(tick.ring[:, :-1], before[:, 1:]) and torch.equal(tick.ring[:, -1], tick.host_frames)
    clips = (tick.ring.float() / 127.5 - 1).flatten(1, 2)
    expected = score_clips(TorchBackend(model), clips)
    torch.testing.assert_close(tick.out_score, expected.score, rtol=1e-5, atol=1e-7)
    assert torch.equal(tick.out_yx[0], expected.y) and torch.equal(tick.out_yx[1], expected.x)
    pooled = torch.nn.functional.avg_pool2d(expected.errors.unsqueeze(1), 4).squeeze(1)
    torch.testing.assert_close(tick.out_heat.float(), pooled, rtol=2e-3, atol=1e-5)


def test_the_script_writes_its_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--out", str(out), "--configs", "lite",
         "--seconds", "0.05", "--streams", "1,2", "--precisions", "fp32"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "gpu-bench.json").read_text())
    assert report["environment"]["device"] in ("cpu", "cuda")
    (part,) = report["parts"]
    base, *rows = part["rows"]
    assert base["pipeline"] == "paper (published)" and base["fps"] > 0
    assert [r["streams"] for r in rows[:2]] == [1, 2]
    for row in rows:
        assert "error" not in row, row
        assert row["fps"] > 0 and row["x_baseline"] == row["fps"] / base["fps"]
    table = (out / "gpu-bench.md").read_text()
    assert "| fp32 | 2 | concurrent | no |" in table and "Paper pipeline" in table
