"""GPU benchmark: the service's compute path on a CUDA device against the paper's pipeline.

Run as `python bench/gpu_bench.py --out DIR` (needs only torch and this project's `model`
package, so it runs on a bare GPU machine). It measures, in one run:

  baseline  the published pipeline: eager strict fp32 (no TF32), batch 1, mapping encoder
            computed, each clip uploaded as float32, the reconstruction downloaded and scored by
            the Python double loop on the host.
  ours      per tick, S streams each deliver one new uint8 frame: one host->device copy of the
            S frames into per-stream ring buffers of T frames kept on the device, clips gathered
            there, both encoders on two CUDA streams (prediction + reconstruction concurrently),
            the patch score, its window and the error heatmap computed on the device, and only
            scores, windows and a 4x-pooled fp16 heatmap copied back. Batch = S streams.
            Variants: precision (tf32 / bf16 / fp16), streams, encoders sequential vs concurrent,
            eager vs one CUDA graph per tick.

fps is frames scored per second, the median over timed blocks after warm-up. Writes
gpu-bench.json and gpu-bench.md to --out. On a CPU it runs too (tiny settings, for testing the
script), without the CUDA-only variants.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.network import DESDnet, DESDnetConfig, count_flops  # noqa: E402
from model.scoring import error_map, patch_score, patch_score_loop  # noqa: E402

DTYPES = {"tf32": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, seconds: float, blocks: int = 5) -> dict[str, float]:
    """Median seconds per call over `blocks` timed blocks (after warm-up), each about seconds/blocks."""
    for _ in range(3):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - t0, 1e-6)
    per_block = max(1, int(seconds / blocks / once))
    samples = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per_block):
            fn()
        sync(device)
        samples.append((time.perf_counter() - t0) / per_block)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "calls": per_block * blocks}


@contextlib.contextmanager
def tf32(enabled: bool):  # type: ignore[no-untyped-def]
    with torch.backends.cudnn.flags(enabled=True, benchmark=enabled, deterministic=False, allow_tf32=enabled):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old


def baseline(model: DESDnet, device: torch.device, seconds: float) -> dict[str, Any]:
    """The paper's published pipeline, one frame at a time."""
    cfg = model.config
    net = model.to(device, memory_format=torch.contiguous_format).eval()
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (cfg.frames, cfg.channels, cfg.image_size, cfg.image_size), generator=gen)

    @torch.no_grad()
    def step() -> None:
        clip = (frames.float() / 127.5 - 1).reshape(1, -1, cfg.image_size, cfg.image_size).to(device)
        out = net(clip, with_feature=True)
        image = out.image.cpu()
        patch_score_loop(error_map(image, clip[:, -cfg.channels :].cpu()), cfg.patch_size, cfg.patch_stride)

    with tf32(False):
        t = timed(step, device, seconds, blocks=3)
    return {"pipeline": "paper (published)", "precision": "fp32", "streams": 1, "fps": 1 / t["median_s"],
            "ms_per_tick": t["median_s"] * 1e3, "calls": t["calls"]}


class StreamTick:
    """One tick of S streams: upload S uint8 frames, update the device rings, score S clips.

    ring: (S, T, C, H, W) uint8 on the device, oldest frame first. Outputs (on the host, pinned):
    score (S,), window y/x (S,), heatmap (S, H/4, W/4) fp16.
    """

    def __init__(self, model: DESDnet, streams: int, precision: str, concurrent: bool, device: torch.device) -> None:
        cfg = self.cfg = model.config
        self.model, self.device, self.precision = model, device, precision
        self.side = torch.cuda.Stream(device) if concurrent and device.type == "cuda" else None
        size, c, t = cfg.image_size, cfg.channels, cfg.frames
        gen = torch.Generator().manual_seed(streams)
        pin = device.type == "cuda"
        self.host_frames = torch.randint(0, 256, (streams, c, size, size), dtype=torch.uint8, generator=gen)
        if pin:
            self.host_frames = self.host_frames.pin_memory()
        self.new = torch.empty((streams, c, size, size), dtype=torch.uint8, device=device)
        self.ring = torch.randint(0, 256, (streams, t, c, size, size), dtype=torch.uint8, generator=gen).to(device)
        pooled = (size // 4, size // 4)
        self.out_score = torch.empty(streams, pin_memory=pin)
        self.out_yx = torch.empty((2, streams), dtype=torch.long, pin_memory=pin)
        self.out_heat = torch.empty((streams, *pooled), dtype=torch.float16, pin_memory=pin)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.dev_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Device-side part: ring update, clip gather, model, score, heatmap."""
        cfg = self.cfg
        self.ring[:, :-1] = self.ring[:, 1:].clone()
        self.ring[:, -1] = self.new
        clips = (self.ring.float() / 127.5 - 1).flatten(1, 2).contiguous(memory_format=torch.channels_last)
        dtype = DTYPES[self.precision]
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            image = self.model(clips, with_feature=False, side_stream=self.side).image
        errors = error_map(image.float(), clips[:, -cfg.channels :])
        top = patch_score(errors, cfg.patch_size, cfg.patch_stride)
        heat = F.avg_pool2d(errors.square().unsqueeze(1), 4).squeeze(1).half()
        return top.score, torch.stack([top.y, top.x]), heat

    def capture(self) -> None:
        """One CUDA graph for compute(); the upload and download stay outside it."""
        warm = torch.cuda.Stream(self.device)
        warm.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(warm):
            for _ in range(3):
                self.compute()
        torch.cuda.current_stream(self.device).wait_stream(warm)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.dev_out = self.compute()

    @torch.no_grad()
    def tick(self) -> None:
        self.new.copy_(self.host_frames, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            assert self.dev_out is not None
            score, yx, heat = self.dev_out
        else:
            score, yx, heat = self.compute()
        self.out_score.copy_(score, non_blocking=True)
        self.out_yx.copy_(yx, non_blocking=True)
        self.out_heat.copy_(heat, non_blocking=True)


def ours(model: DESDnet, device: torch.device, seconds: float, streams: int, precision: str,
         concurrent: bool = True, graph: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {"pipeline": "ours", "precision": precision, "streams": streams,
                           "encoders": "concurrent" if concurrent else "sequential",
                           "cuda_graph": graph}
    try:
        with tf32(precision != "fp32"), torch.no_grad():
            tick = StreamTick(model, streams, precision, concurrent, device)
            if graph:
                tick.capture()
            t = timed(tick.tick, device, seconds)
        row.update(fps=streams / t["median_s"], ms_per_tick=t["median_s"] * 1e3, calls=t["calls"])
    except Exception as exc:  # one failed variant must not lose the others' figures
        row["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def new_part(config_name: str, device: torch.device, seconds: float,
             say: Callable[[str], None]) -> tuple[dict[str, Any], DESDnet]:
    cfg = DESDnetConfig.named(config_name)
    torch.manual_seed(0)
    model = DESDnet(cfg).eval()
    part: dict[str, Any] = {
        "config": config_name,
        "gflop_per_frame": count_flops(model, with_feature=False) / 1e9,
        "gflop_per_frame_with_mapping": count_flops(model, with_feature=True) / 1e9,
        "rows": [],
    }
    base = baseline(model, device, seconds)
    part["rows"].append(base)
    say(f"{config_name} baseline: {base['fps']:.1f} fps")
    return part, model.to(device, memory_format=torch.channels_last)


def add_rows(part: dict[str, Any], model: DESDnet, device: torch.device, seconds: float,
             variants: list[tuple[int, str, bool, bool]], say: Callable[[str], None]) -> None:
    base = part["rows"][0]
    for streams, precision, concurrent, graph in variants:
        row = ours(model, device, seconds, streams, precision, concurrent, graph)
        if "fps" in row:
            row["x_baseline"] = row["fps"] / base["fps"]
            row["tflops"] = row["fps"] * part["gflop_per_frame"] / 1e3
        part["rows"].append(row)
        say(f"{part['config']} {precision} streams {streams} {row['encoders']} graph={graph}: "
            + (f"{row['fps']:.1f} fps" if "fps" in row else row["error"]))


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU benchmark: {env.get('gpu', env['device'])}, torch {env['torch']}", ""]
    for part in report["parts"]:
        rows = part["rows"]
        base = rows[0]
        lines += [
            f"## `{part['config']}` ({part['gflop_per_frame']:.1f} GFLOP per frame without the mapping encoder)",
            "",
            f"Paper pipeline (eager fp32, batch 1, mapping encoder, Python-loop score): **{base['fps']:.1f} fps**.",
            "",
            "| precision | streams (batch) | encoders | CUDA graph | fps | ms per tick | × paper pipeline | TFLOP/s |",
            "|---|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in rows[1:]:
            if "fps" not in r:
                lines.append(f"| {r['precision']} | {r['streams']} | {r['encoders']} | {r['cuda_graph']} | "
                             f"failed: {r['error'][:60]} | | | |")
                continue
            lines.append(
                f"| {r['precision']} | {r['streams']} | {r['encoders']} | {'yes' if r['cuda_graph'] else 'no'} | "
                f"{r['fps']:.0f} | {r['ms_per_tick']:.2f} | {r['x_baseline']:.1f} | {r['tflops']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--configs", default="paper,lite")
    p.add_argument("--seconds", type=float, default=1.5, help="timed seconds per variant")
    p.add_argument("--streams", default="1,4,16,64,128")
    p.add_argument("--precisions", default="tf32,fp16,bf16", help="the last one also gets the graph/ablation rows")
    p.add_argument("--graph-streams", default="1,4,16,64")
    p.add_argument("--ablation-streams", default="1,64")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    def say(text: str) -> None:
        print(text, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(device), "parts": []}
    say(json.dumps(report["environment"]))
    cuda = device.type == "cuda"
    precisions = args.precisions.split(",")
    last = precisions[-1]

    def save() -> None:
        (args.out / "gpu-bench.json").write_text(json.dumps(report, indent=1))
        (args.out / "gpu-bench.md").write_text(markdown(report))

    models = {}
    # Eager rows of every configuration first; CUDA-graph rows last, so that a capture that
    # upsets the device cannot cost the other figures.
    for name in args.configs.split(","):
        try:
            part, model = new_part(name, device, args.seconds, say)
            report["parts"].append(part)
            models[name] = (part, model)
            variants = [(s, p, True, False) for p in precisions for s in ints(args.streams)]
            if cuda:
                variants += [(s, last, False, False) for s in ints(args.ablation_streams)]
            add_rows(part, model, device, args.seconds, variants, say)
        except Exception as exc:
            traceback.print_exc()
            report.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
        save()
    if cuda:
        for part, model in models.values():
            add_rows(part, model, device, args.seconds,
                     [(s, last, True, True) for s in ints(args.graph_streams)], say)
            save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
