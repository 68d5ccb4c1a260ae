"""`vad bench`: how fast the model runs, per backend, precision and batch size.

Parts of the benchmark:
  (a) `bench_model`: model-only throughput, `Reconstructor.reconstruct` on a ready batch
      (median of timed runs after warm-up) for every backend × precision × batch size.
  (b) `run_end_to_end`: frames per second through a real `vad serve` (subprocess on 127.0.0.1,
      `BenchServer`) with 1, 2, 4 concurrent push streams and a WebSocket subscriber each
      (`bench_end_to_end`, one run against any running server); its 1-stream fps over the
      model-only batch-1 fps of the same backend/precision is the "service overhead".
  (c) `bench_paper_pipeline`: the published pipeline as baseline: eager fp32 PyTorch, batch 1,
      mapping encoder computed, patch score by the Python double loop (`patch_score_loop`).
Every (a) row carries its speed-up over (c) and over torch fp32 at batch 1; every (b) run its
ratio to model-only batch 1.
`write_report` writes bench.json and bench.md to the output folder.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections import deque
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
    pairs: tuple[tuple[str, str], ...] | None = None  # explicit (backend, precision) pairs for (a)
    end_to_end: bool = False  # run part (b) (`vad bench` turns it on unless --no-end-to-end)
    streams: tuple[int, ...] = (1, 2, 4)
    e2e_seconds: float | None = None  # None: `seconds`
    e2e_fps: float | None = None  # per stream; None: closed loop
    e2e_transports: tuple[str, ...] = ("http", "websocket")  # how (b) pushes frames (see bench_end_to_end)
    e2e_backend: str = "fastest"  # a backend, "auto" (the service's choice) or "fastest" (fastest (a) row, batch 1)
    e2e_precision: str = "fp32"  # with an explicit backend
    frames: Path | None = None  # frames for (b): dataset root or frame folders; None: `data`, else synthetic
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timing:
    median_s: float
    p90_s: float
    runs: int
    cpu_s_per_run: float | None = None  # CPU time of this process (all threads) per timed run

    @classmethod
    def of(cls, samples: list[float], cpu_s: float | None = None) -> Timing:
        ordered = sorted(samples)
        return cls(
            statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], len(ordered),
            cpu_s / len(ordered) if cpu_s is not None else None,
        )


def time_call(fn: Callable[[], object], seconds: float, warmup: int = 2, min_runs: int = 3) -> Timing:
    """Call fn `warmup` times untimed, then until `seconds` have passed and `min_runs` were timed."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    began, cpu_began = time.perf_counter(), time.process_time()
    while len(samples) < min_runs or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing.of(samples, time.process_time() - cpu_began)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads (Linux /proc); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


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
    pairs = options.pairs or tuple((b, p) for b in options.backends for p in options.precisions)
    for backend, precision in pairs:
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
                # CPU time per frame, all threads: what the model costs the cores (e2e compares with it)
                "cpu_ms_per_frame": timing.cpu_s_per_run * 1e3 / batch if timing.cpu_s_per_run else None,
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


# ---------------------------------------------------------------------------------------------
# part (b): end to end through a running server

E2E_READY_TIMEOUT_S = 180.0  # int8 artefacts may be built at server start when not cached
E2E_MAX_IN_FLIGHT = 16  # fixed-fps mode: most requests of one stream under way at once
E2E_WS_WINDOW = 2  # websocket transport: frames of one stream under way (the server's default window)
E2E_TRANSPORTS = ("http", "websocket")


def load_stream_frames(source: Path | None, streams: int, limit: int = 400) -> tuple[list[list[bytes]], str]:
    """JPEG bytes per stream: one video each (cycling when there are fewer videos than streams).

    source: a dataset root (its testing/frames/NN/*.jpg are used), a folder of video frame folders,
    or None for synthetic 360x240 frames. At most `limit` frames per video are kept in memory.
    """
    import cv2
    import numpy as np

    if source is None:
        out = []
        for i in range(streams):
            rng = np.random.default_rng(i)
            base = rng.integers(60, 200, (240, 360, 3), dtype=np.uint8)
            frames = []
            for t in range(40):
                frame = base.copy()
                x = (7 * t + 40 * i) % 320
                frame[100:140, x : x + 40] = 255
                ok, data = cv2.imencode(".jpg", frame)
                assert ok
                frames.append(data.tobytes())
            out.append(frames)
        return out, "synthetic 360x240 JPEG frames"
    from model.data import frame_sort_key

    root = Path(source)
    for candidate in (root / "testing" / "frames", root / "frames", root):
        folders = sorted(p for p in candidate.glob("*") if p.is_dir()) if candidate.is_dir() else []
        folders = [f for f in folders if any(f.glob("*.jpg"))]
        if folders:
            break
    else:
        raise ValueError(f"{source}: no folders of .jpg frames (expected ROOT/testing/frames/NN/*.jpg)")
    videos = []
    for i in range(streams):
        folder = folders[i % len(folders)]
        files = sorted(folder.glob("*.jpg"), key=frame_sort_key)[:limit]
        videos.append([f.read_bytes() for f in files])
    names = ", ".join(folders[i % len(folders)].name for i in range(streams))
    return videos, f"JPEG frames of {candidate} (videos {names})"


def _metric_sum(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
    import re

    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if labels is None or all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(4))
    return total


def _model_info(text: str) -> dict[str, str]:
    import re

    for line in text.splitlines():
        if line.startswith("vad_model_info{"):
            return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line))
    return {}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)

    def pick(q: float) -> float:  # nearest rank
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": statistics.median(ordered), "p99": pick(0.99)}


class _FramePoster:
    """The load generator's frame sender: POST requests on keep-alive HTTP/1.1 connections written on
    asyncio streams (one connection per request under way). httpx spends about 4 ms of CPU per request
    here, taken from the same 2 cores as the server under test; this spends a fraction of that, so the
    benchmark measures the server rather than its client. Replies must carry Content-Length (uvicorn's do).
    """

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float = 30.0) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = f"Host: {self.host}:{self.port}\r\nContent-Type: image/jpeg\r\n{extra}"
        self.timeout_s = timeout_s
        self._idle: list[tuple[Any, Any]] = []

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, body) of one POST; raises OSError (or TimeoutError) when the exchange fails."""
        import asyncio

        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout_s)
        try:
            status, reply, keep = await asyncio.wait_for(self._exchange(reader, writer, path, body), self.timeout_s)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return status, reply

    async def _exchange(self, reader: Any, writer: Any, path: str, body: bytes) -> tuple[int, bytes, bool]:
        writer.write(f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise OSError("the server closed the connection")
        status = int(status_line.split()[1])
        length, keep = 0, True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value == "close":
                keep = False
        return status, await reader.readexactly(length), keep

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _run_streams(
    url: str, videos: list[list[bytes]], seconds: float, fps_per_stream: float | None, headers: dict[str, str],
    transport: str = "http", window: int = E2E_WS_WINDOW, server_pid: int | None = None,
) -> dict[str, Any]:
    import asyncio

    import httpx
    from websockets.asyncio.client import connect

    n = len(videos)
    ws_url = "ws" + url[len("http"):]
    timeout = httpx.Timeout(30.0, connect=10.0)
    limits = httpx.Limits(max_connections=E2E_MAX_IN_FLIGHT + 1, max_keepalive_connections=E2E_MAX_IN_FLIGHT + 1)
    clients = [httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, headers=headers) for _ in range(n)]
    posters = [_FramePoster(url, headers) for _ in range(n)]
    ids: list[str] = []
    received = [0] * n
    sockets: list[Any] = []
    ingest: list[Any] = []  # websocket transport: one /ingest connection per stream
    readers: list[asyncio.Task[None]] = []
    # per stream: (sent_at, answered_at, status, server latency ms) of timed frames
    records: list[list[tuple[float, float, str, float | None]]] = [[] for _ in range(n)]
    scored_all = [0] * n  # every scored answer, warm-up included: what the WebSocket should deliver
    errors = [0] * n
    skipped = [0] * n
    cursor = [0] * n

    def next_frame(i: int) -> bytes:
        frames = videos[i]
        cursor[i] += 1
        return frames[(cursor[i] - 1) % len(frames)]

    def answered(i: int, body: dict[str, Any], sent: float, timed: bool) -> str:
        status = str(body.get("status", "?"))
        if status not in ("scored", "warming", "dropped"):
            errors[i] += 1
            return "error"
        if status == "scored":
            scored_all[i] += 1
        if timed:
            records[i].append((sent, time.perf_counter(), status, body.get("latency_ms")))
        return status

    async def push(i: int, timed: bool) -> str:
        data = next_frame(i)
        sent = time.perf_counter()
        if transport == "websocket":  # one frame under way (warm-up)
            await ingest[i].send(data)
            return answered(i, json.loads(await ingest[i].recv()), sent, timed)
        try:
            status, reply = await posters[i].post(f"/v1/streams/{ids[i]}/frames", data)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, TimeoutError):
            errors[i] += 1
            return "error"
        if status != 200:
            errors[i] += 1
            return "error"
        return answered(i, json.loads(reply), sent, timed)

    async def pipelined(i: int) -> None:
        """websocket transport: keep `window` frames under way until the deadline, then drain."""
        under_way: deque[float] = deque()
        while True:
            while len(under_way) < window and time.perf_counter() < deadline:
                data = next_frame(i)
                under_way.append(time.perf_counter())
                await ingest[i].send(data)
            if not under_way:
                return
            body = json.loads(await ingest[i].recv())
            answered(i, body, under_way.popleft(), timed=True)

    async def reader(i: int, ws: Any) -> None:
        try:
            async for _ in ws:
                received[i] += 1
        except Exception:  # closed by the server or by us
            pass

    try:
        for i, client in enumerate(clients):
            r = await client.post("/v1/streams", json={"source": "push", "name": f"bench-{i}"})
            r.raise_for_status()
            ids.append(r.json()["id"])
        for i in range(n):
            ws = await connect(f"{ws_url}/v1/streams/{ids[i]}/scores", open_timeout=10,
                               additional_headers=headers or None, max_size=None)
            sockets.append(ws)
            readers.append(asyncio.create_task(reader(i, ws)))
            if transport == "websocket":
                ingest.append(await connect(f"{ws_url}/v1/streams/{ids[i]}/ingest", open_timeout=10,
                                            additional_headers=headers or None, max_size=None, compression=None))

        async def warm(i: int) -> None:  # untimed: fill the ring buffer until the first score
            for _ in range(20):
                if await push(i, timed=False) == "scored":
                    return

        await asyncio.gather(*(warm(i) for i in range(n)))
        metrics_before = (await clients[0].get("/metrics")).text
        server_cpu_began = process_cpu_seconds(server_pid) if server_pid else None
        began, client_cpu_began = time.perf_counter(), time.process_time()
        deadline = began + seconds

        async def closed_loop(i: int) -> None:
            while time.perf_counter() < deadline:
                await push(i, timed=True)

        async def fixed_rate(i: int, fps: float) -> None:
            pending: set[asyncio.Task[str]] = set()
            k = 0
            while True:
                due = began + k / fps
                if due >= deadline:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                k += 1
                pending = {t for t in pending if not t.done()}
                if len(pending) >= E2E_MAX_IN_FLIGHT:
                    skipped[i] += 1  # the client cannot keep this rate: the frame is never sent
                    continue
                pending.add(asyncio.create_task(push(i, timed=True)))
            if pending:
                await asyncio.wait(pending)

        if transport == "websocket":
            run = pipelined
        else:
            run = closed_loop if fps_per_stream is None else (lambda i: fixed_rate(i, fps_per_stream))
        await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(n))), seconds + 60)
        ended, client_cpu = time.perf_counter(), time.process_time() - client_cpu_began
        server_cpu_ended = process_cpu_seconds(server_pid) if server_pid else None
        # Let the WebSocket feeds catch up with what was scored (bounded).
        catch_up = time.perf_counter() + 3.0
        while time.perf_counter() < catch_up and any(received[i] < scored_all[i] for i in range(n)):
            await asyncio.sleep(0.02)
        metrics_after = (await clients[0].get("/metrics")).text
    finally:
        for ws in ingest + sockets:
            await ws.close()
        for task in readers:
            task.cancel()
        for i, sid in enumerate(ids):
            with contextlib.suppress(httpx.HTTPError):
                await clients[i].delete(f"/v1/streams/{sid}")
        for client in clients:
            await client.aclose()
        for poster in posters:
            poster.close()

    elapsed = max(ended - began, 1e-9)
    per_stream = []
    client_ms: list[float] = []
    server_ms: list[float] = []
    for i in range(n):
        scored = [r for r in records[i] if r[2] == "scored"]
        client_ms += [(done - sent) * 1e3 for sent, done, _, _ in scored]
        server_ms += [lat for _, _, _, lat in scored if lat is not None]
        per_stream.append({
            "stream": ids[i],
            "sent": len(records[i]),
            "scored": len(scored),
            "dropped": sum(r[2] == "dropped" for r in records[i]),
            "warming": sum(r[2] == "warming" for r in records[i]),
            "errors": errors[i],
            "not_sent": skipped[i],
            "fps": len(scored) / elapsed,
            "dropped_metrics": _metric_sum(metrics_after, "vad_frames_dropped_total", {"stream": ids[i]}),
            "ws_received": received[i],
            "ws_expected": scored_all[i],
        })

    def delta(name: str) -> float:
        return _metric_sum(metrics_after, name) - _metric_sum(metrics_before, name)

    batches = delta("vad_inference_batch_frames_count")
    scored_total = max(1, sum(s["scored"] for s in per_stream))
    server_cpu = (server_cpu_ended - server_cpu_began
                  if server_cpu_began is not None and server_cpu_ended is not None else None)
    return {
        # CPU time per scored frame over the timed phase (all threads): the server process (when its
        # pid is known) and this load generator; cores_busy = both together / wall time.
        "server_cpu_ms_per_frame": server_cpu * 1e3 / scored_total if server_cpu is not None else None,
        "client_cpu_ms_per_frame": client_cpu * 1e3 / scored_total,
        "cores_busy": (client_cpu + (server_cpu or 0.0)) / elapsed if server_cpu is not None else None,
        "seconds": round(elapsed, 3),
        "fps": sum(s["scored"] for s in per_stream) / elapsed,
        "per_stream_fps": [s["fps"] for s in per_stream],
        "sent": sum(s["sent"] for s in per_stream),
        "scored": sum(s["scored"] for s in per_stream),
        "dropped_responses": sum(s["dropped"] for s in per_stream),
        "dropped_metrics": sum(s["dropped_metrics"] for s in per_stream),
        "errors": sum(errors),
        "not_sent": sum(skipped),
        "client_latency_ms": _percentiles(client_ms),
        "server_latency_ms": _percentiles(server_ms),
        "ws_received": sum(received),
        "ws_expected": sum(scored_all),
        "ws_dropped_metrics": delta("vad_websocket_messages_dropped_total"),
        "mean_batch": delta("vad_inference_batch_frames_sum") / batches if batches else None,
        "model": {k: v for k, v in _model_info(metrics_after).items() if k != "config"},
        "per_stream": per_stream,
    }


def bench_end_to_end(
    url: str,
    streams: int,
    seconds: float,
    fps_per_stream: float | None = None,
    source: Path | None = None,
    token: str | None = None,
    transport: str = "http",
    window: int = E2E_WS_WINDOW,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Part (b), one run against a running `vad serve` at `url` (e.g. "http://127.0.0.1:8000").

    Opens `streams` push streams (POST /v1/streams), each with a WebSocket subscriber on
    /v1/streams/{id}/scores, and pushes one video's JPEG frames per stream (`load_stream_frames`):
    untimed until each stream's first score, then for `seconds`, either closed loop (the next
    frame as soon as the previous answer arrives: `fps_per_stream` None) or at a fixed rate per
    stream (up to E2E_MAX_IN_FLIGHT requests under way; frames beyond are counted as not_sent).
    Returns scored fps in total and per stream, p50/p99 latency of the client round trip and the
    server's `latency_ms`, drops from the answers and from /metrics, WebSocket messages received
    vs frames scored, the mean batch the worker formed, and CPU time per scored frame of this client
    and (with `server_pid`, a local server) of the server. Stops by itself; deletes its streams.

    transport "http" pushes each frame with POST /v1/streams/{id}/frames as described; "websocket"
    sends them over one /v1/streams/{id}/ingest connection per stream, keeping `window` frames under
    way (closed loop with pipelining; no fixed-rate mode).
    """
    import asyncio

    if transport not in E2E_TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(E2E_TRANSPORTS)}, not {transport!r}")
    if transport == "websocket" and fps_per_stream is not None:
        raise ValueError("the websocket transport runs closed loop only; drop fps_per_stream")
    videos, described = load_stream_frames(source, streams)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    result = asyncio.run(
        _run_streams(url.rstrip("/"), videos, seconds, fps_per_stream, headers, transport, window, server_pid)
    )
    if transport == "websocket":
        mode = f"pipelined, {window} under way"
    else:
        mode = "closed loop" if fps_per_stream is None else f"{fps_per_stream:g} fps per stream"
    return {
        "streams": streams,
        "transport": transport,
        "mode": mode,
        "fps_per_stream_target": fps_per_stream,
        "frames": described,
        **result,
    }


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BenchServer:
    """`vad serve` in a subprocess on 127.0.0.1 and a free port; a context manager that stops it.

        with BenchServer(weights, "openvino", "int8", threads=2) as server:
            bench_end_to_end(server.url, 2, 10.0)
    """

    def __init__(
        self,
        weights: Path,
        backend: str = "torch",
        precision: str = "fp32",
        threads: int = 0,
        cache_dir: Path | None = None,
        calibration_data: Path | None = None,
        extra_args: tuple[str, ...] = (),
        ready_timeout: float = E2E_READY_TIMEOUT_S,
    ) -> None:
        self.weights, self.backend, self.precision = Path(weights), backend, precision
        self.threads, self.cache_dir, self.calibration_data = threads, cache_dir, calibration_data
        self.extra_args, self.ready_timeout = extra_args, ready_timeout
        self.process: Any = None
        self.url = ""
        self._log: Any = None

    def __enter__(self) -> BenchServer:
        import subprocess
        import sys
        import tempfile

        import httpx

        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.cache_dir is not None:
            env["VAD_CACHE_DIR"] = str(self.cache_dir)
        if self.calibration_data is not None:
            env.setdefault("VAD_CALIBRATION_DATA", str(self.calibration_data))
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            self._log = tempfile.TemporaryFile()
            command = [
                sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--weights", str(self.weights), "--backend", self.backend, "--precision", self.precision,
                "--device", "cpu", "--torch-threads", str(self.threads), "--log-level", "warning",
                *self.extra_args,
            ]
            self.process = subprocess.Popen(command, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self.ready_timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    r = httpx.get(self.url + "/readyz", timeout=2.0)
                    if r.status_code == 200:
                        return self
                    if "cannot load the model" in r.text:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            output = self._output()
            self.__exit__(None, None, None)
            if attempt < 2 and "address already in use" in output.lower():
                continue
            raise RuntimeError(f"vad serve did not become ready at {self.url}: {output[-2000:]}")
        raise AssertionError("unreachable")

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        import signal
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def run_end_to_end(
    weights: Path,
    backend: str,
    precision: str,
    streams: tuple[int, ...] = (1, 2, 4),
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
                if progress:
                    print(f"  {n} stream(s), {transport}, {row['mode']}: {row['fps']:.2f} fps scored "
                          f"(per stream {', '.join(f'{x:.2f}' for x in row['per_stream_fps'])}); "
                          f"client p50 {_fmt(row['client_latency_ms']['p50'], 1)} ms, "
                          f"dropped {row['dropped_responses']}, WS {row['ws_received']}/{row['ws_expected']}",
                          flush=True)
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
    if options.end_to_end:
        _say(options, "end to end through the server (b)")
        report["end_to_end"] = end_to_end_part(model, options, rows)
    report["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return report


def fastest_model_only(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(backend, precision) of the fastest part-(a) row at batch 1."""
    ones = [r for r in rows if r.get("batch") == 1 and "fps" in r]
    if not ones:
        return None
    best = max(ones, key=lambda r: r["fps"])
    return best["backend"], best["precision"]


def end_to_end_part(model: DESDnet, options: ModelBenchOptions, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Part (b) for `vad bench`: choose the backend, start the server, run every stream count, and add
    each run's ratio to model-only batch-1 fps of the same backend/precision ("service overhead" at 1 stream)."""
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
            _say(options, f"  end to end failed: {type(exc).__name__}: {exc}")
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
            f"| {row['fps']:.2f} | {row['median_ms']:.1f} | {row['p90_ms']:.1f} | {_fmt(row.get('cpu_ms_per_frame'), 1)} "
            f"| {_fmt(row['x_paper_pipeline'])} | {_fmt(row['x_torch_fp32_b1'])} "
            f"| {_fmt(row['max_abs_diff_vs_torch_fp32'], 4)} | {row['build_s']:.1f} ({'yes' if row['cached'] else 'no'}) |"
        )
    notes = sorted({n for row in report["model_only"] for n in row.get("notes", [])})
    if errors or notes:
        lines += ["", "Notes:", *errors, *(f"- {n}" for n in notes)]
    lines += ["", *format_end_to_end(report.get("end_to_end")), ""]
    return "\n".join(lines)


def format_end_to_end(part: dict[str, Any] | None) -> list[str]:
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
        + ", ".join(f"{_fmt(v)} over {k}" for k, v in overhead.items())
        + f"** = end-to-end fps at 1 stream / model-only fps at batch 1 of the same backend and precision "
        f"({_fmt(part.get('model_only_fps_b1'))}). The model alone costs "
        f"{_fmt(part.get('model_only_cpu_ms_per_frame_b1'), 1)} CPU ms per frame at batch 1 (all threads); the "
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
            f"| {_fmt(c['p50'], 1)} / {_fmt(c['p99'], 1)} | {_fmt(s['p50'], 1)} / {_fmt(s['p99'], 1)} "
            f"| {run['dropped_responses']} / {run['dropped_metrics']:g} | {run['ws_received']} / {run['ws_expected']} "
            f"| {_fmt(run['mean_batch'])} "
            f"| {_fmt(run.get('server_cpu_ms_per_frame'), 1)} / {_fmt(run.get('client_cpu_ms_per_frame'), 1)} "
            f"| {_fmt(run.get('cores_busy'))} | {_fmt(run.get('x_model_only_b1'))} |"
        )
    frames = {run["frames"] for run in part["runs"]}
    if frames:
        lines += ["", f"Frames: {'; '.join(sorted(frames))}."]
    return lines


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
