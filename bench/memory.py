"""Server memory (RSS) under large pushed frames: the "Production hardening" measurement.

    python -m bench.memory                       # the shipped weights, 1 stream, 22 uploads each
    python -m bench.memory --streams 16 --json out.json
    python -m bench.memory --root /tmp/old-checkout --max-pixels 16777216   # A/B against another tree

Starts `vad serve` in a subprocess (CPU, the shipped weights unless --weights), then for each phase
reads the server's VmRSS from /proc/PID/status and, when the server has it, the gauge
vad_heatmap_history_bytes from /metrics:

1. `start`: ready, the streams created;
2. `uhd`: after --uploads uploads of a 3840x2160 RGBA PNG into each stream (accepted by the default
   pixel cap, 4K UHD);
3. `4096`: after --uploads uploads of a 4096x4096 RGBA PNG into each stream (refused with 413 by the
   default cap: the count of 413s is reported);
4. `deleted`: after DELETE of every stream.

The images are a few flat areas (a small PNG, like the issue's 65 KB 4096x4096 file) whose shade
changes from upload to upload; --texture makes them a smooth random texture instead (larger PNGs and
JPEG copies). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from bench.server import BenchServer

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPOSITORY / "weights" / "ped2-lite.safetensors"
PNG = {"content-type": "image/png"}


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def history_bytes(base: str) -> float | None:
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vad_heatmap_history_bytes "):
            return float(line.split()[1])
    return None  # a server without the gauge (e.g. an older tree)


def image_png(width: int, height: int, shade: int, texture: bool) -> bytes:
    """An RGBA PNG of width x height (BGRA as OpenCV writes it)."""
    if texture:
        rng = np.random.default_rng(shade)
        small = rng.integers(0, 256, (height // 64, width // 64, 3), np.uint8)
        bgr = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        bgr = np.empty((height, width, 3), np.uint8)
        bgr[:, : width // 2] = (shade, 60, 200)
        bgr[:, width // 2:] = (40, 200, 255 - shade)
        bgr[height // 4: height // 2, width // 8: width // 4] = 255
    bgra = np.concatenate([bgr, np.full((height, width, 1), 255, np.uint8)], axis=2)
    ok, data = cv2.imencode(".png", bgra)
    assert ok
    return data.tobytes()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    extra = ["--max-upload-bytes", str(args.max_upload_bytes)]
    if args.max_pixels:
        extra += ["--max-pixels", str(args.max_pixels)]
    extra += args.serve_args
    uhd = [image_png(3840, 2160, 20 * i % 256, args.texture) for i in range(args.uploads)]
    big = [image_png(4096, 4096, 20 * i % 256, args.texture) for i in range(args.uploads)]
    report: dict[str, Any] = {
        "root": str(args.root), "weights": str(args.weights), "streams": args.streams, "uploads": args.uploads,
        "texture": args.texture, "serve_args": extra,
        "png_kb": {"3840x2160": round(np.mean([len(d) for d in uhd]) / 1024, 1),
                   "4096x4096": round(np.mean([len(d) for d in big]) / 1024, 1)},
        "phases": [],
    }

    with BenchServer(args.weights, threads=args.threads, extra_args=tuple(extra), ready_timeout=120,
                     root=args.root) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        def phase(name: str, **more: Any) -> None:
            time.sleep(0.5)
            row = {"phase": name, "rss_mb": round(rss_mb(server.process.pid), 1),
                   "history_bytes": history_bytes(server.url), **more}
            report["phases"].append(row)
            print(json.dumps(row), flush=True)

        streams = [client.post("/v1/streams", json={"source": "push"}).json()["id"] for _ in range(args.streams)]
        phase("start")
        for name, bodies in (("uhd", uhd), ("4096", big)):
            statuses: dict[str, int] = {}
            started = time.perf_counter()
            for data in bodies:
                for sid in streams:
                    r = client.post(f"/v1/streams/{sid}/frames", content=data, headers=PNG)
                    key = r.json()["status"] if r.status_code == 200 else str(r.status_code)
                    statuses[key] = statuses.get(key, 0) + 1
            phase(name, answers=statuses, seconds=round(time.perf_counter() - started, 1))
        for sid in streams:
            client.delete(f"/v1/streams/{sid}")
        phase("deleted")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--root", type=Path, default=REPOSITORY, help="source tree whose `vad serve` runs")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--uploads", type=int, default=22, help="uploads per stream and image size")
    parser.add_argument("--texture", action="store_true", help="smooth random texture instead of flat areas")
    parser.add_argument("--threads", type=int, default=2, help="--torch-threads of the server")
    parser.add_argument("--max-upload-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--max-pixels", type=int, default=0, help="--max-pixels of the server (0: its default)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("serve_args", nargs="*", help="more `vad serve` flags, after --")
    args = parser.parse_args(argv)
    report = measure(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
