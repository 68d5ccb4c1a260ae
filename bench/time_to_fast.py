"""Time from a fresh `vad serve` (default `--backend auto`, empty cache) to the fast backend.

    .venv/bin/python -m bench.time_to_fast [--seconds-after 10] [--frames DIR] [--output FILE.json]

Starts `vad serve` as `make serve` does (no backend flag) with an empty artefact cache, pushes two
streams of Ped2 test video 01 over the ingest WebSocket (a pipelining client, up to 4 frames under
way each), and polls vad_model_info until the background autotune has decided. It reports the time
to ready, the time to the switch, the backend chosen, every stream's frames answered (all of them,
in order) and the frames per second per stream before and after the switch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FRAMES = ROOT.parent / "shared" / "data" / "ped2" / "testing" / "frames" / "01"
DECIDED = ("switched", "kept", "failed", "stopped", "off", "record")


def model_info(base: str) -> dict[str, str]:
    line = next(x for x in httpx.get(base + "/metrics", timeout=10).text.splitlines() if x.startswith("vad_model_info{"))
    return dict(re.findall(r'(\w+)="([^"]*)"', line))


def push(port: int, base: str, name: str, frames: list[bytes], stop: threading.Event, t0: float,
         answers: dict[str, list[tuple[float, dict]]]) -> None:
    from websockets.sync.client import connect

    sid = httpx.post(base + "/v1/streams", json={"name": name}, timeout=10).json()["id"]
    got = answers[name] = []
    window = threading.Semaphore(4)
    sent = [0]
    with connect(f"ws://127.0.0.1:{port}/v1/streams/{sid}/ingest", max_size=2**24, ping_interval=None) as ws:
        def send() -> None:
            while not stop.is_set():
                if window.acquire(timeout=1):
                    ws.send(frames[sent[0] % len(frames)])
                    sent[0] += 1

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while sender.is_alive() or len(got) < sent[0]:
            try:
                got.append((time.monotonic() - t0, json.loads(ws.recv(timeout=5))))
                window.release()
            except TimeoutError:
                if stop.is_set():
                    break


def rate(times: list[float]) -> float | None:
    return round(len(times) / (times[-1] - times[0]), 1) if len(times) > 1 and times[-1] > times[0] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default=str(FRAMES), help="a folder of JPEG frames to push")
    parser.add_argument("--seconds-after", type=float, default=10.0, help="pushing after the decision")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    frames = [p.read_bytes() for p in sorted(Path(args.frames).glob("*.jpg"))]
    if not frames:
        raise SystemExit(f"time_to_fast: no JPEG frames in {args.frames}")
    cache = tempfile.mkdtemp(prefix="vad-time-to-fast-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAD_")}
    env["VAD_CACHE_DIR"] = cache
    log_path = Path(cache) / "server.log"
    t0 = time.monotonic()
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                if server.poll() is not None or time.monotonic() - t0 > args.timeout:
                    raise SystemExit(f"time_to_fast: vad serve did not become ready: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            t_ready = time.monotonic() - t0
            stop, answers = threading.Event(), {}
            pushers = [threading.Thread(target=push, args=(port, base, n, frames, stop, t0, answers), daemon=True)
                       for n in ("a", "b")]
            for p in pushers:
                p.start()
            while (info := model_info(base))["autotune"] not in DECIDED:
                if time.monotonic() - t0 > args.timeout:
                    raise SystemExit("time_to_fast: the autotune did not decide in time")
                time.sleep(0.2)
            t_decided = time.monotonic() - t0
            time.sleep(args.seconds_after)
            stop.set()
            for p in pushers:
                p.join(30)
        finally:
            server.terminate()
            server.wait(30)
    report = {
        "ready_s": round(t_ready, 1), "decided_s": round(t_decided, 1), "autotune": info["autotune"],
        "backend": f"{info['backend']}/{info['precision']}", "streams": {},
    }
    for name, got in answers.items():
        indices = [a["frame_index"] for _, a in got]
        scored = [(t, a) for t, a in got if a["status"] == "scored"]
        report["streams"][name] = {
            "answers": len(got), "in_order": indices == list(range(len(indices))),
            "dropped": sum(a["status"] == "dropped" for _, a in got),
            "fps_before": rate([t for t, _ in scored if t_ready + 2 < t < t_decided]),
            "fps_after": rate([t for t, _ in scored if t > t_decided + 1]),
        }
    print(json.dumps(report, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
