"""Soak: `vad serve` under a steady mixed load for a long time, sampling what would reveal a leak.

    .venv/bin/python -m bench.soak --minutes 30 [--restart-every 60] [--output bench/results/soak]

Load: two live RTSP cameras (the GStreamer test server of tests/support/rtsp.py, Ped2 test videos 01
and 02), two streams pushed over HTTP at `--push-fps`, one dashboard-like WebSocket subscriber of
every stream (reads everything) and one slow one (reads a message every `--slow-read-s`, and comes
back when the server drops it). With `--restart-every S` one camera is killed and started again
every S seconds. Every `--sample-s` it records the server's RSS, open file descriptors and threads,
and the frames scored per stream; at the end it fits the RSS slope (MB per minute) over the samples
after `--warmup-minutes` and writes soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PED2 = ROOT.parent / "shared" / "data" / "ped2"


@dataclass
class Sample:
    t_s: float  # since the load started
    rss_mb: float
    fds: int
    threads: int
    scored: dict[str, int]  # frames scored per stream name


@dataclass
class Counters:
    pushed: int = 0
    push_errors: int = 0
    dashboard_messages: int = 0
    slow_messages: int = 0
    slow_reconnects: int = 0
    camera_restarts: int = 0
    errors: list[str] = field(default_factory=list)


def process_status(pid: int) -> tuple[float, int, int]:
    """(RSS MB, open fds, threads) of a Linux process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss_mb = int(fields["VmRSS"].split()[0]) / 1024
    return rss_mb, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def slope_per_minute(samples: list[Sample], after_s: float) -> float | None:
    """Least-squares slope of RSS (MB per minute) over the samples taken after `after_s`."""
    points = [(s.t_s / 60, s.rss_mb) for s in samples if s.t_s >= after_s]
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_r = statistics.fmean(r for _, r in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (r - mean_r) for t, r in points) / den if den else None


def pusher(url: str, stream_id: str, frames: list[bytes], fps: float, stop: threading.Event, c: Counters) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for data in itertools.cycle(frames):
            if stop.is_set():
                return
            began = time.monotonic()
            try:
                r = client.post(f"/v1/streams/{stream_id}/frames", content=data, headers={"content-type": "image/jpeg"})
                c.pushed += 1
                if r.status_code != 200:
                    c.push_errors += 1
            except httpx.HTTPError as exc:
                c.push_errors += 1
                c.errors.append(f"push: {exc!r}"[:200])
            stop.wait(max(0.0, 1 / fps - (time.monotonic() - began)))


def subscriber(ws_url: str, stop: threading.Event, c: Counters, slow_read_s: float | None) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    from websockets.sync.client import connect

    while not stop.is_set():
        try:
            with connect(ws_url, open_timeout=10) as ws:
                while not stop.is_set():
                    try:
                        ws.recv(timeout=1.0)
                    except TimeoutError:
                        continue
                    if slow_read_s is None:
                        c.dashboard_messages += 1
                    else:
                        c.slow_messages += 1
                        stop.wait(slow_read_s)
        except (ConnectionClosed, InvalidHandshake, OSError) as exc:
            if slow_read_s is None and not stop.is_set():
                c.errors.append(f"dashboard: {exc!r}"[:200])
        if slow_read_s is not None and not stop.is_set():
            c.slow_reconnects += 1
            stop.wait(1.0)


def run(args: argparse.Namespace) -> dict:
    from bench.server import BenchServer
    from tests.support.rtsp import RtspCamera, rtsp_available

    why = rtsp_available()
    if why:
        raise SystemExit(f"soak: {why}")
    frames_root = PED2 / "testing" / "frames"
    if not frames_root.is_dir():
        raise SystemExit(f"soak: {frames_root}: the Ped2 test frames are needed")
    pushed = {name: [p.read_bytes() for p in sorted((frames_root / name).glob("*.jpg"))] for name in ("03", "04")}
    os.environ["VAD_ALLOWED_SOURCE_NETWORKS"] = "127.0.0.0/8"  # the test cameras are on loopback
    counters = Counters()
    stop = threading.Event()
    samples: list[Sample] = []
    with RtspCamera(frames_root / "01", fps=args.camera_fps) as cam1, \
            RtspCamera(frames_root / "02", fps=args.camera_fps) as cam2, \
            BenchServer(Path(args.weights), args.backend, args.precision, threads=args.threads,
                        calibration_data=PED2 if PED2.is_dir() else None) as server:
        pid = server.process.pid
        names: dict[str, str] = {}
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            for name, cam in (("camera-1", cam1), ("camera-2", cam2)):
                r = client.post("/v1/streams", json={"source": cam.url, "name": name,
                                                     "options": {"max_fps": args.camera_fps}})
                r.raise_for_status()
                names[r.json()["id"]] = name
            push_ids = {}
            for name in pushed:
                r = client.post("/v1/streams", json={"name": f"push-{name}"})
                r.raise_for_status()
                names[r.json()["id"]] = f"push-{name}"
                push_ids[name] = r.json()["id"]
        ws_base = server.url.replace("http://", "ws://")
        threads = [threading.Thread(target=pusher, args=(server.url, push_ids[n], pushed[n], args.push_fps, stop,
                                                         counters), daemon=True) for n in pushed]
        threads.append(threading.Thread(target=subscriber, args=(ws_base + "/v1/scores", stop, counters, None),
                                        daemon=True))
        threads.append(threading.Thread(target=subscriber, args=(ws_base + "/v1/scores", stop, counters,
                                                                 args.slow_read_s), daemon=True))
        for thread in threads:
            thread.start()
        began = time.monotonic()
        next_restart = began + args.restart_every if args.restart_every else None
        end = began + args.minutes * 60
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            while time.monotonic() < end:
                now = time.monotonic()
                if next_restart is not None and now >= next_restart:
                    cam1.kill()
                    cam1.start()
                    counters.camera_restarts += 1
                    next_restart += args.restart_every
                rss, fds, nthreads = process_status(pid)
                streams = client.get("/v1/streams").json()["data"]
                samples.append(Sample(round(now - began, 1), round(rss, 1), fds, nthreads,
                                      {names.get(s["id"], s["id"]): s["frames_scored"] for s in streams}))
                if args.progress:
                    print(f"  {samples[-1].t_s:7.0f} s  RSS {rss:7.1f} MB  fds {fds}  threads {nthreads}  "
                          f"scored {samples[-1].scored}", flush=True)
                time.sleep(max(0.0, args.sample_s - (time.monotonic() - now)))
        stop.set()
        for thread in threads:
            thread.join(15)
    minutes = args.minutes
    first, last = samples[0], samples[-1]
    fps = {name: round((last.scored[name] - first.scored.get(name, 0)) / max(last.t_s - first.t_s, 1e-9), 2)
           for name in last.scored}
    after = args.warmup_minutes * 60
    steady = [s for s in samples if s.t_s >= after]
    return {
        "minutes": minutes, "restart_every_s": args.restart_every, "backend": f"{args.backend}/{args.precision}",
        "camera_fps": args.camera_fps, "push_fps": args.push_fps, "warmup_minutes": args.warmup_minutes,
        "rss_slope_mb_per_min": slope_per_minute(samples, after),
        "rss_mb": {"start": first.rss_mb, "after_warmup": steady[0].rss_mb if steady else None, "end": last.rss_mb,
                   "max": max(s.rss_mb for s in samples)},
        "fds": {"after_warmup": steady[0].fds if steady else None, "end": last.fds, "max": max(s.fds for s in samples)},
        "threads": {"after_warmup": steady[0].threads if steady else None, "end": last.threads,
                    "max": max(s.threads for s in samples)},
        "fps_per_stream": fps,
        "counters": asdict(counters) | {"errors": counters.errors[:20]},
        "samples": [asdict(s) for s in samples],
    }


def markdown(report: dict) -> str:
    r = report
    lines = [
        f"# Soak: {r['minutes']} min, {r['backend']}"
        + (f", camera-1 restarted every {r['restart_every_s']} s" if r["restart_every_s"] else ""),
        "",
        f"RSS slope after {r['warmup_minutes']} min of warm-up: **{r['rss_slope_mb_per_min']:.3f} MB/min** "
        f"(RSS {r['rss_mb']['after_warmup']} MB after warm-up, {r['rss_mb']['end']} MB at the end, "
        f"max {r['rss_mb']['max']} MB).",
        f"File descriptors {r['fds']['after_warmup']} -> {r['fds']['end']} (max {r['fds']['max']}); "
        f"threads {r['threads']['after_warmup']} -> {r['threads']['end']} (max {r['threads']['max']}).",
        "",
        "| stream | frames scored per second |",
        "|---|---:|",
        *(f"| {name} | {fps} |" for name, fps in sorted(r["fps_per_stream"].items())),
        "",
        "Counters: " + ", ".join(f"{k} {v}" for k, v in r["counters"].items() if k != "errors"),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--restart-every", type=float, default=0.0, help="seconds between camera restarts (0: none)")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--camera-fps", type=int, default=5)
    parser.add_argument("--push-fps", type=float, default=5.0)
    parser.add_argument("--slow-read-s", type=float, default=0.5)
    parser.add_argument("--weights", default=str(ROOT / "weights" / "ped2-lite.safetensors"))
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "soak"))
    parser.add_argument("--quiet", dest="progress", action="store_false")
    args = parser.parse_args()
    report = run(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tag = "restart" if args.restart_every else "steady"
    (out / f"soak-{tag}.json").write_text(json.dumps(report, indent=2))
    (out / f"soak-{tag}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
