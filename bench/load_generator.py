"""`vad bench` part (b)'s load generator: push streams against a running `vad serve` and measure it.

`bench_end_to_end(url, streams, seconds)` opens push streams, each with a WebSocket subscriber,
pushes one video's JPEG frames per stream (bench/frames.py) over HTTP or the ingest WebSocket, and
returns throughput, latencies, drops, WebSocket delivery, the mean batch the server formed and CPU
time per scored frame. It works against any server (`bench.server.BenchServer` starts a local one).
Only the standard library is imported at module level (`bench.cli` reads E2E_TRANSPORTS cheaply).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.frames import load_stream_frames
from bench.timing import process_cpu_seconds

E2E_MAX_IN_FLIGHT = 16  # fixed-fps mode: most requests of one stream under way at once
E2E_WS_WINDOW = 2  # websocket transport: frames of one stream under way (the server's default window)
E2E_TRANSPORTS = ("http", "websocket")  # one POST per frame; the ingest WebSocket, pipelined


def _metric_sum(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
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
    """Labels of the vad_model_info sample in Prometheus text (backend, precision, ...)."""
    for line in text.splitlines():
        if line.startswith("vad_model_info{"):
            return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line))
    return {}


def _percentiles(values: list[float]) -> dict[str, float | None]:
    """Median and 99th percentile (nearest rank) of `values`; None for both when empty."""
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
    settle_seconds: float = 0.0, on_timing: Callable[[str], None] | None = None,
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
        settled = time.perf_counter() + settle_seconds

        async def settle(i: int) -> None:  # untimed, one frame under way: what watches the streams settles
            while time.perf_counter() < settled:
                await push(i, timed=False)

        await asyncio.gather(*(settle(i) for i in range(n)))
        if on_timing is not None:
            on_timing("start")
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
        if on_timing is not None:
            on_timing("end")
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
    settle_seconds: float = 0.0,
    on_timing: Callable[[str], None] | None = None,
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

    `settle_seconds`: after the first scores, keep pushing (untimed, one frame under way) this long
    before the timed part, e.g. for dashboard pages to open the new streams. `on_timing("start")`
    and `on_timing("end")` are called (from the load's own thread) around the timed part.
    """
    import asyncio

    if transport not in E2E_TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(E2E_TRANSPORTS)}, not {transport!r}")
    if transport == "websocket" and fps_per_stream is not None:
        raise ValueError("the websocket transport runs closed loop only; drop fps_per_stream")
    videos, described = load_stream_frames(source, streams)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    result = asyncio.run(
        _run_streams(url.rstrip("/"), videos, seconds, fps_per_stream, headers, transport, window, server_pid,
                     settle_seconds, on_timing)
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


