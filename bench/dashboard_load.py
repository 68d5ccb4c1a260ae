"""Does the dashboard slow scoring? Scored fps of pushed streams with and without dashboard tabs open.

    .venv/bin/python -m bench.dashboard_load [--streams 2] [--tabs 2] [--seconds 20] [--rounds 2]
                                             [--data ../shared/data/ped2] [--out bench/results/dashboard]

A `vad serve` subprocess (bench.server.BenchServer) scores `streams` push streams fed closed loop
over the ingest WebSocket (bench.load_generator.bench_end_to_end: the most the server can score).
Runs alternate between no browser page open ("baseline") and `tabs` dashboard tabs open in headless
Chromium ("dashboard"): the first tab on the overview (every stream's live view), the others on the
stream page of a stream (live view, chart, counters), measured once they have settled (`--settle`
seconds of untimed load, in both conditions). Alternating spreads slow drifts of a shared
machine over both conditions. The ratio is mean dashboard fps / mean baseline fps; the dashboard
is meant to keep it at 0.9 or more. Also recorded: the browser's CPU time (all its processes and
Playwright's driver), the server's CPU time per scored frame, the preview images each tab loaded per
second, and the load average. On a machine shared with other jobs throughput swings with their
load, so the summary also gives the bound the browser's own CPU time sets on a dedicated machine:
(cores - browser cores) / cores.

Chromium is Debian's (`apt-get install chromium`), driven by Playwright through executable_path.
Results: results.json and results.md in `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.load_generator import bench_end_to_end
from bench.server import BenchServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "dashboard"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ped2"


def _browser_processes(server_pid: int | None) -> list[Any]:
    """This process's descendants but the server's (psutil processes): Chromium's processes, the
    Playwright driver and its Python. Empty without psutil."""
    try:
        import psutil
    except ImportError:
        return []
    skip: set[int] = set()
    if server_pid is not None:
        with contextlib.suppress(psutil.Error):
            server = psutil.Process(server_pid)
            skip = {server_pid, *(p.pid for p in server.children(recursive=True))}
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in skip]


def _browser_cpu_seconds(server_pid: int | None) -> float | None:
    """CPU seconds (user + system) of the browser's processes. None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for process in _browser_processes(server_pid):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _idle_priority(server_pid: int | None) -> None:
    """SCHED_IDLE for the browser's processes: they run only on CPU time nothing else wants, which
    stands in for a browser on another computer."""
    for process in _browser_processes(server_pid):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(process.pid, os.SCHED_IDLE, os.sched_param(0))


class BrowserDriver:
    """Headless Chromium and its tabs, driven by Playwright in a child process: the driver's Python
    (it handles an event per request the pages make) must not share this process's GIL with the
    load generator, or the dashboard condition would slow the load, not the service."""

    def __init__(self, chromium: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_drive_browser, args=(child, chromium), daemon=True)
        self.process.start()
        self.call("ready")

    def call(self, command: str, *args: Any) -> Any:
        self.conn.send((command, args))
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"browser driver: {value}")
        return value

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            self.call("quit")
        self.process.join(30)


def _drive_browser(conn: Any, chromium: str) -> None:
    """The child process: answers (command, args) from BrowserDriver until "quit"."""
    from playwright.sync_api import sync_playwright

    count_js = "performance.getEntriesByType('resource').filter((e) => e.name.includes('preview.jpg')).length"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--disable-gpu", "--disable-dev-shm-usage"])
        contexts: list[Any] = []
        pages: list[Any] = []
        while True:
            # Let Playwright serve the pages while no command waits.
            while not conn.poll(0.0):
                if pages:
                    pages[0].wait_for_timeout(100)
                else:
                    conn.poll(0.1)
            command, args = conn.recv()
            try:
                if command == "ready":
                    value: Any = True
                elif command == "open":  # (url, tabs): every tab on the overview
                    url, tabs = args
                    for _ in range(tabs):
                        context = browser.new_context(viewport={"width": 1280, "height": 900})
                        # Previews are counted by the page itself (resource timing), not by a listener.
                        context.add_init_script("performance.setResourceTimingBufferSize(100000)")
                        page = context.new_page()
                        page.goto(url + "/")
                        contexts.append(context)
                        pages.append(page)
                    value = True
                elif command == "goto":  # (urls,): tab i + 1 to urls[i]
                    for page, target in zip(pages[1:], args[0], strict=False):
                        page.goto(target)
                    value = True
                elif command == "previews":
                    value = [int(page.evaluate(count_js)) for page in pages]
                elif command == "close_tabs":
                    for context in contexts:
                        context.close()
                    contexts, pages = [], []
                    value = True
                elif command == "quit":
                    conn.send((True, True))
                    break
                else:
                    raise ValueError(f"unknown command {command!r}")
                conn.send((True, value))
            except Exception as exc:  # reported to the parent, which stops the benchmark
                conn.send((False, f"{type(exc).__name__}: {exc}"))
        browser.close()


def run_round(url: str, args: argparse.Namespace, browser: BrowserDriver | None, server_pid: int | None,
              ) -> dict[str, Any]:
    """One timed run; with `browser`, `args.tabs` dashboard tabs stay open through it. The tabs open
    on the overview; once the load's streams exist the stream tabs go to their pages, and the timed
    part starts `args.settle` seconds later (both conditions wait alike): a steady state, as with
    tabs a user keeps open, not the pages' loading."""
    result: dict[str, Any] = {}
    marks: dict[str, tuple[float, float | None]] = {}  # phase -> (monotonic time, browser CPU seconds)

    def on_timing(phase: str) -> None:
        if phase == "start" and browser is not None and args.browser_priority == "idle":
            _idle_priority(server_pid)  # every renderer exists by now
        marks[phase] = (time.monotonic(), _browser_cpu_seconds(server_pid) if browser is not None else None)

    def load() -> None:
        # Closed loop over the ingest WebSocket (the most the service scores), or cameras at a fixed
        # rate over HTTP (--fps-per-stream: scoring keeps up; what changes is latency).
        load = ({"transport": "websocket"} if args.fps_per_stream is None
                else {"transport": "http", "fps_per_stream": args.fps_per_stream})
        result.update(bench_end_to_end(url, args.streams, args.seconds, source=args.data, server_pid=server_pid,
                                       settle_seconds=args.settle, on_timing=on_timing, **load))
        result["load_average_1min"] = round(os.getloadavg()[0], 2)

    if browser is not None:
        browser.call("open", url, args.tabs)
    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    if browser is not None:
        import httpx

        deadline = time.monotonic() + 30
        streams: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not streams:
            streams = httpx.get(url + "/v1/streams", timeout=5).json()["data"]
            time.sleep(0.2)
        if streams:
            browser.call("goto", [f"{url}/#/streams/{streams[i % len(streams)]['id']}" for i in range(args.tabs - 1)])
    counted_at: list[int] | None = None
    while worker.is_alive():
        worker.join(0.2)
        if browser is not None and "start" in marks and counted_at is None:
            counted_at = browser.call("previews")  # the previews shown when timing starts
    if browser is not None and "start" in marks and "end" in marks:
        (began, cpu_before), (ended, cpu_after) = marks["start"], marks["end"]
        elapsed = ended - began
        result["browser_cpu_cores"] = (
            round((cpu_after - cpu_before) / elapsed, 3) if cpu_before is not None and cpu_after is not None else None)
        # Counted from shortly after the start to shortly after the end: a rate, not an exact count.
        counted = browser.call("previews")
        result["previews_per_second_per_tab"] = [
            round((n - before) / elapsed, 2) for n, before in zip(counted, counted_at or [0] * len(counted), strict=True)]
    if browser is not None:
        browser.call("close_tabs")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--tabs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per condition, alternating")
    parser.add_argument("--fps-per-stream", type=float, default=None,
                        help="push each stream at this rate over HTTP, like a camera (default: closed loop, as fast "
                        "as the service scores)")
    parser.add_argument("--browser-priority", choices=("normal", "idle"), default="normal",
                        help="idle: the browser runs at SCHED_IDLE, standing in for a browser on another computer "
                        "(what remains is the service's own cost of serving the pages)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="untimed seconds of load before each timed run (the tabs open the streams' pages)")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights" / "ped2-lite.safetensors")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_dir() else None,
                        help="a Ped2-like dataset root for the frames (default: ../shared/data/ped2 if present, "
                        "else synthetic frames)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        parser.error("Debian's chromium is not installed (apt-get install chromium)")
    runs: list[dict[str, Any]] = []
    with BenchServer(args.weights, args.backend) as server:
        browser = BrowserDriver(chromium)
        pid = server.process.pid
        try:
            for round_ in range(args.rounds):
                for condition in ("baseline", "dashboard"):
                    result = run_round(server.url, args, browser if condition == "dashboard" else None, pid)
                    result.update(condition=condition, round=round_)
                    runs.append(result)
                    print(f"round {round_} {condition:9s}: {result['fps']:.1f} scored fps"
                          + (f", browser {result['browser_cpu_cores']} cores, previews/s per tab "
                             f"{result['previews_per_second_per_tab']}" if condition == "dashboard" else ""),
                          flush=True)
        finally:
            browser.close()

    def mean_fps(condition: str) -> float:
        return statistics.mean(r["fps"] for r in runs if r["condition"] == condition)

    baseline, dashboard = mean_fps("baseline"), mean_fps("dashboard")
    # Each round's dashboard run against the baseline run just before it: robust to slow drifts.
    pairs = [d["fps"] / b["fps"] for b, d in zip(runs[::2], runs[1::2], strict=True) if b["fps"] > 0]
    browser_cores = [r["browser_cpu_cores"] for r in runs if r.get("browser_cpu_cores") is not None]

    def mean_of(key: str, condition: str) -> float | None:
        values = [r[key] for r in runs if r["condition"] == condition and r.get(key) is not None]
        return statistics.mean(values) if values else None

    # Throughput on a shared machine swings with other jobs' load (and so does CPU time per frame:
    # torch's threads spin while they wait for a core). The browser's own CPU time bounds what the
    # tabs can take from scoring on a dedicated machine of this many cores, when scoring is CPU-bound.
    cores = os.cpu_count() or 1
    base_ms, dash_ms = mean_of("server_cpu_ms_per_frame", "baseline"), mean_of("server_cpu_ms_per_frame", "dashboard")
    browser_mean = statistics.mean(browser_cores) if browser_cores else 0.0
    cpu_ratio = (cores - browser_mean) / cores
    summary = {
        "streams": args.streams, "tabs": args.tabs, "seconds": args.seconds, "rounds": args.rounds,
        "backend": args.backend, "weights": str(args.weights.name), "frames": runs[0]["frames"],
        "browser_priority": args.browser_priority, "settle_seconds": args.settle,
        "fps_per_stream": args.fps_per_stream,
        "transport": ("websocket (ingest), closed loop" if args.fps_per_stream is None
                      else f"http, {args.fps_per_stream:g} fps per stream"),
        "baseline_fps": round(baseline, 2), "dashboard_fps": round(dashboard, 2),
        "ratio": round(dashboard / baseline, 3),
        "pair_ratios": [round(p, 3) for p in pairs],
        "median_pair_ratio": round(statistics.median(pairs), 3) if pairs else None,
        "browser_cpu_cores_mean": round(statistics.mean(browser_cores), 3) if browser_cores else None,
        "server_cpu_ms_per_frame": {"baseline": base_ms and round(base_ms, 2), "dashboard": dash_ms and round(dash_ms, 2)},
        "browser_bound_ratio": round(cpu_ratio, 3),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": [{k: v for k, v in r.items() if k not in ("per_stream", "model")} for r in runs],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# Dashboard load: scored fps with and without dashboard tabs",
        "",
        f"{args.streams} streams pushed {summary['transport']} ({summary['frames']}), "
        f"{args.backend} backend, {args.seconds:g} s per run, {args.rounds} runs per condition, alternating; "
        f"{summary['machine']['cpus']} CPUs. Dashboard: {args.tabs} headless Chromium tabs (the overview, and "
        f"stream pages), on the same machine, at {args.browser_priority} CPU priority; timed after "
        f"{args.settle:g} s of untimed load.",
        "",
        "| run | condition | scored fps | latency p50 / p99 ms | server CPU ms/frame | browser CPU (cores) "
        "| previews/s per tab | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        server_ms = r.get("server_cpu_ms_per_frame")
        latency = r.get("server_latency_ms") or {}
        lines.append(f"| {r['round']} | {r['condition']} | {r['fps']:.1f} | "
                     f"{latency.get('p50', 0):.0f} / {latency.get('p99', 0):.0f} | "
                     f"{'–' if server_ms is None else f'{server_ms:.1f}'} | {r.get('browser_cpu_cores', '–')} | "
                     f"{r.get('previews_per_second_per_tab', '–')} | {r.get('load_average_1min')} |")
    lines += ["", f"Mean: baseline {baseline:.1f} fps, with the dashboard {dashboard:.1f} fps: "
              f"**ratio {dashboard / baseline:.3f}**; median of the rounds' ratios "
              f"{summary['median_pair_ratio']}; the browser used {summary['browser_cpu_cores_mean']} cores on average.",
              "",
              f"Server CPU per scored frame: {base_ms and round(base_ms, 1)} ms without and {dash_ms and round(dash_ms, 1)} "
              f"ms with the tabs. The browser's own CPU ({browser_mean:.3f} cores of {cores}) bounds what the tabs can "
              f"take from scoring on a dedicated machine: a ratio of at least **{cpu_ratio:.3f}** when scoring is "
              "CPU-bound. On a shared machine throughput (and CPU time per frame: torch's threads spin while they wait "
              "for a core) swings with other jobs' load (load average column).", ""]
    (args.out / "results.md").write_text("\n".join(lines))
    print(f"ratio {dashboard / baseline:.3f} (baseline {baseline:.1f} fps, dashboard {dashboard:.1f} fps), "
          f"median pair ratio {summary['median_pair_ratio']}, browser-bound ratio {summary['browser_bound_ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
