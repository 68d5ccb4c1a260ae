"""Events on real footage: the 12 UCSD Ped2 test videos pushed through a real server, measured against
the ground truth.

    python -m bench.events_ped2 [--weights W] [--data PED2] [--output bench/results/events]
                                [--videos 01,04] [--release 25,10]

A server (`service.app.create_app`, uvicorn in a thread: tests/support/serving.py) runs with the shipped
weights, backend torch, calibration auto (the service's default: Ped2 stays on the model's calibration)
and the default event parameters. Each test video becomes its own named stream; its frames are pushed in
order through POST /v1/streams/{id}/frames, the JPEG files as they are, with capture timestamps 40 ms
apart (25 fps) starting an hour ago (recent: older events would be deleted by retention). Every Ped2
anomaly lasts to the end of its video or close to it, so an event may still be open when the footage
ends: the stream is then deleted (as an operator does when a camera is gone), which closes it
(`stream_deleted`, ending at its last frame at or above the exit threshold), and the bench waits until
every event of the stream is stored with its media.

Per video (ground truth: testing/ground_truth.json, one inclusive interval per video, and the pixel
masks testing/masks/VV/NNN.png):
 - the events: start/end frames, end reason, peak frame and z, box;
 - delay: the first event's start frame minus the first anomalous frame (frames and seconds); negative
   is early (an event before the anomaly);
 - temporal overlap: the union of the events' frame intervals against the anomalous frames: IoU,
   precision (share of event frames that are anomalous) and recall (share of anomalous frames covered);
 - the snapshot box (`box`, in frame pixels) against the mask of the event's peak frame, three ways:
   `hit` (any anomalous pixel inside the box: the box points at the anomaly; the issue's "overlaps"),
   `mask_iou` (pixel IoU of the box with the mask: small by construction, the box being a rectangle
   over a silhouette and the union of many frames' windows) and `in_region` (share of the box's area
   inside the mask's bounding box grown by half a top window on each side: how much of the box is on or
   next to the anomaly; the half window forgives the window's coarseness, 45x30 px on Ped2). The peak
   frame's own top window is scored the same way (`peak_window_hit`);
 - the snapshot and the clip: both fetched and decoded (OpenCV, PyAV): snapshot size, clip frame count
   and rate.
With `--release 25,10` each video is also pushed with a shorter release (per-stream `events`).
Writes events_ped2.json and events_ped2.md under --output, with the CPU (lscpu) and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from model.paths import DEFAULT_WEIGHTS
from service.settings import Settings
from tests.support.data import PED2
from tests.support.serving import RunningServer, running_server

FPS = 25.0
DEFAULT_OUTPUT = Path("bench") / "results" / "events"
JPEG = {"content-type": "image/jpeg"}
#: Capture time of each video's first frame: an hour ago (events older than the retention are deleted).
BASE_AGE_S = 3600.0


# --- the footage and its ground truth ----------------------------------------------------------------


@dataclass(frozen=True)
class Video:
    name: str
    frames: list[bytes]  # the JPEG files, as they are
    anomalous: tuple[int, int]  # inclusive, 0-based
    root: Path

    @property
    def gt_frames(self) -> set[int]:
        return set(range(self.anomalous[0], self.anomalous[1] + 1))

    def mask(self, frame: int) -> np.ndarray:
        """bool (H, W): the anomalous pixels of one frame."""
        image = cv2.imread(str(self.root / "testing" / "masks" / self.name / f"{frame:03d}.png"), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FileNotFoundError(f"no mask for frame {frame} of video {self.name}")
        return image > 127


def test_video_names(root: Path = PED2) -> list[str]:
    return sorted(json.loads((root / "testing" / "ground_truth.json").read_text())["videos"])


def load_video(name: str, root: Path = PED2) -> Video:
    truth = json.loads((root / "testing" / "ground_truth.json").read_text())["videos"][name]
    (first, last), *more = truth["anomalous"]
    assert not more, f"video {name}: one anomalous interval expected"
    files = sorted((root / "testing" / "frames" / name).glob("*.jpg"))
    assert len(files) == truth["frames"], (name, len(files))
    return Video(name, [f.read_bytes() for f in files], (int(first), int(last)), root)


# --- a server and a stream ----------------------------------------------------------------------------


def server_settings(data_dir: Path, weights: Path = DEFAULT_WEIGHTS, **overrides: Any) -> Settings:
    """The service's defaults with the shipped weights, backend torch on the CPU, calibration auto."""
    return Settings.from_flat(**{
        "weights": weights, "models_dir": weights.parent, "data_dir": data_dir, "backend": "torch",
        "device": "cpu", "calibration": "auto", "log_level": "warning", **overrides,
    })


@contextmanager
def bench_server(data_dir: Path | None = None, weights: Path = DEFAULT_WEIGHTS) -> Iterator[RunningServer]:
    with (tempfile.TemporaryDirectory(prefix="vad-events-") as tmp,
          running_server(server_settings(data_dir or Path(tmp), weights)) as server):
        yield server


def push_video(client: httpx.Client, sid: str, video: Video, base: float) -> list[dict[str, Any]]:
    """Push every frame in order, frame i captured at base + i / 25 s; the per-frame answers."""
    out = []
    for i, data in enumerate(video.frames):
        r = client.post(f"/v1/streams/{sid}/frames", content=data, headers=JPEG, params={"timestamp": base + i / FPS})
        r.raise_for_status()
        out.append(r.json())
    return out


def stored_events(client: httpx.Client, sid: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The stream's events, oldest first, once none is open (an ended event is stored with its media)."""
    deadline = time.monotonic() + timeout
    while True:
        events = client.get(f"/v1/streams/{sid}/events", params={"limit": 500}).json()["data"]
        if not any(e["open"] for e in events) or time.monotonic() > deadline:
            return sorted(events, key=lambda e: e["start_frame"])
        time.sleep(0.05)


def run_video(client: httpx.Client, video: Video, base: float, events: dict[str, Any] | None = None,
              name: str | None = None) -> tuple[str, list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Create a stream, push the video, note what is open at its end, delete the stream (closing an open
    event), wait for the stored events: (stream id, per-frame answers, stream at the end, events)."""
    body: dict[str, Any] = {"name": name or f"ped2-{video.name}"}
    if events:
        body["events"] = events
    r = client.post("/v1/streams", json=body)
    r.raise_for_status()
    sid = r.json()["id"]
    frames = push_video(client, sid, video, base)
    at_end = client.get(f"/v1/streams/{sid}").json()
    client.delete(f"/v1/streams/{sid}").raise_for_status()
    return sid, frames, at_end, stored_events(client, sid)


# --- measures -----------------------------------------------------------------------------------------


def box_measures(box: dict[str, int] | None, mask: np.ndarray, margin: tuple[int, int]) -> dict[str, Any]:
    """A box (x, y, w, h in frame pixels) against a bool mask: hit, mask_iou, mask_covered, in_region
    (share of the box inside the mask's bounding box grown by `margin` = (mx, my) pixels each side)."""
    if box is None:
        return {"hit": None, "mask_iou": None, "mask_covered": None, "in_region": None}
    h, w = mask.shape
    x0, y0 = max(0, box["x"]), max(0, box["y"])
    x1, y1 = min(w, box["x"] + box["w"]), min(h, box["y"] + box["h"])
    inside = np.zeros_like(mask)
    inside[y0:y1, x0:x1] = True
    both = int((inside & mask).sum())
    anomalous = int(mask.sum())
    if anomalous == 0:
        return {"hit": False, "mask_iou": 0.0, "mask_covered": None, "in_region": 0.0, "mask_empty": True}
    region = grown_box(mask, margin)
    area = max(1, int(inside.sum()))
    return {
        "hit": both > 0,
        "mask_iou": round(both / int((inside | mask).sum()), 4),
        "mask_covered": round(both / anomalous, 4),
        "in_region": round(int((inside & region).sum()) / area, 4),
    }


def interval_measures(events: Sequence[dict[str, Any]], gt: set[int], n_frames: int) -> dict[str, Any]:
    frames: set[int] = set()
    for e in events:
        end = e["end_frame"] if e["end_frame"] is not None else n_frames - 1
        frames |= set(range(e["start_frame"], end + 1))
    both = len(frames & gt)
    return {
        "event_frames": len(frames),
        "iou": round(both / len(frames | gt), 4) if frames | gt else None,
        "precision": round(both / len(frames), 4) if frames else None,
        "recall": round(both / len(gt), 4) if gt else None,
    }


def decode_clip(data: bytes) -> tuple[int, float, tuple[int, int]]:
    """(frames, frame rate, (W, H)) of an MP4, decoded with PyAV."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        frames = list(container.decode(video=0))
    return len(frames), rate, (frames[0].width, frames[0].height) if frames else (0, 0)


def decode_snapshot(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def grown_box(mask: np.ndarray, margin: tuple[int, int]) -> np.ndarray:
    """bool (H, W): the mask's bounding box grown by margin = (mx, my) pixels on each side."""
    region = np.zeros_like(mask, dtype=bool)
    if mask.any():
        ys, xs = np.nonzero(mask)
        mx, my = margin
        region[max(0, ys.min() - my) : ys.max() + 1 + my, max(0, xs.min() - mx) : xs.max() + 1 + mx] = True
    return region


def heat_measures(overlay: np.ndarray, mask: np.ndarray, margin: tuple[int, int]) -> dict[str, Any]:
    """Where the snapshot's heatmap is hot. Ped2 is grey (B = G = R), and the jet colour map goes from blue
    (low error) to red (at the threshold's level), so R - B of the snapshot is the heat. Reported: its mean
    on the anomalous pixels and elsewhere, and whether the hottest spot (R - B averaged over a top window)
    lies in the mask's bounding box grown by half a window."""
    heat = overlay[:, :, 2].astype(np.float32) - overlay[:, :, 0].astype(np.float32)
    if not mask.any():
        return {"heat_in_mask": None, "heat_elsewhere": round(float(heat.mean()), 2), "hottest_on_anomaly": False}
    window = (max(1, 2 * margin[0]), max(1, 2 * margin[1]))
    y, x = np.unravel_index(int(np.argmax(cv2.blur(heat, window))), heat.shape)
    return {
        "heat_in_mask": round(float(heat[mask].mean()), 2),
        "heat_elsewhere": round(float(heat[~mask].mean()), 2),
        "hottest_on_anomaly": bool(grown_box(mask, margin)[y, x]),
    }


def measure(client: httpx.Client, video: Video, frames: list[dict[str, Any]], at_end: dict[str, Any],
            events: list[dict[str, Any]]) -> dict[str, Any]:
    gt_first, gt_last = video.anomalous
    scored = [f for f in frames if f["status"] == "scored"]
    flagged = [f["frame_index"] for f in scored if f["is_anomaly"]]
    windows = [f["patch"] for f in scored if f.get("patch")]
    margin = (windows[0]["w"] // 2, windows[0]["h"] // 2) if windows else (0, 0)
    by_index = {f["frame_index"]: f for f in scored}
    out_events = []
    for e in events:
        mask = video.mask(e["peak_frame"])
        peak = by_index.get(e["peak_frame"], {})
        item = {k: e[k] for k in ("id", "start_frame", "end_frame", "end_reason", "peak_frame", "peak_score",
                                  "frames_above", "box", "threshold", "media_error")}
        item["box_vs_mask"] = box_measures(e["box"], mask, margin)
        item["peak_window"] = peak.get("patch")
        item["peak_window_hit"] = box_measures(peak.get("patch"), mask, margin)["hit"]
        if e["snapshot_url"]:
            overlay = decode_snapshot(client.get(e["snapshot_url"]).content)
            if overlay is not None:
                item["snapshot_size"] = [overlay.shape[1], overlay.shape[0]]
                item["heat"] = heat_measures(overlay, mask, margin)
        if e["clip_url"]:
            count, rate, size = decode_clip(client.get(e["clip_url"]).content)
            item["clip"] = {"frames": count, "fps": round(rate, 2), "size": size}
        out_events.append(item)
    first = events[0]["start_frame"] if events else None
    return {
        "frames": len(video.frames),
        "gt": [gt_first, gt_last],
        "scored_frames": len(scored),
        "calibration": sorted({f["calibration"] for f in scored if f.get("calibration")}),
        "flagged_frames": len(flagged),
        "first_flagged": flagged[0] if flagged else None,
        "flagged_before_gt": sum(i < gt_first for i in flagged),
        "open_at_end": at_end.get("open_event") is not None,
        "events": out_events,
        "delay_frames": None if first is None else first - gt_first,
        "delay_s": None if first is None else round((first - gt_first) / FPS, 3),
        **interval_measures(events, video.gt_frames, len(video.frames)),
        "window_px": [margin[0] * 2, margin[1] * 2],
        # Per scored frame, from frame `first_scored` on: the smoothed z and the threshold it was held to.
        "first_scored": scored[0]["frame_index"] if scored else None,
        "smoothed": [round(f["smoothed_score"], 2) for f in scored],
        "thresholds": sorted({round(f["threshold"], 3) for f in scored}),
    }


# --- the report ---------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def summary(videos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    events = [e for v in videos.values() for e in v["events"]]
    first_events = [v["events"][0] for v in videos.values() if v["events"]]
    hits = [e["box_vs_mask"]["hit"] for e in events if e["box_vs_mask"]["hit"] is not None]
    delays = [v["delay_frames"] for v in videos.values() if v["delay_frames"] is not None]
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    return {
        "videos": len(videos),
        "videos_with_event": sum(bool(v["events"]) for v in videos.values()),
        "events": len(events),
        "videos_with_one_event": sum(len(v["events"]) == 1 for v in videos.values()),
        "events_box_hit": sum(hits),
        "events_box_hit_share": round(sum(hits) / len(hits), 4) if hits else None,
        "first_events_box_hit": sum(bool(e["box_vs_mask"]["hit"]) for e in first_events),
        "peak_window_hit_share": mean([bool(e["peak_window_hit"]) for e in events]),
        "mean_in_region": mean([e["box_vs_mask"]["in_region"] for e in events if e["box_vs_mask"]["in_region"] is not None]),
        "median_delay_frames": float(np.median(delays)) if delays else None,
        "max_delay_frames": max(delays) if delays else None,
        "mean_iou": mean([v["iou"] for v in videos.values() if v["iou"] is not None]),
        "mean_precision": mean([v["precision"] for v in videos.values() if v["precision"] is not None]),
        "mean_recall": mean([v["recall"] for v in videos.values() if v["recall"] is not None]),
        "snapshots_hottest_on_anomaly": sum(bool(e.get("heat", {}).get("hottest_on_anomaly")) for e in events),
        "clip_decoded": sum("clip" in e and e["clip"]["frames"] > 0 for e in events),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Events on UCSD Ped2 (the 12 test videos through a real server)",
        "",
        f"{result['date']}, {result['cpu']}; weights `{result['weights']}`, backend torch, calibration auto, "
        "frames pushed as their JPEG files at 25 fps capture timestamps; the stream deleted at the end of each "
        "video (closing an open event: `stream_deleted`). `python -m bench.events_ped2` "
        f"({result['seconds']:.0f} s).",
        "",
        "Delay: first event's start frame minus the first anomalous frame (25 fps). IoU / P / R: the union of "
        "the events' frame intervals against the anomalous frames. Box hit: any anomalous pixel of the peak "
        "frame's mask inside the event's box; in-region: share of the box's area inside the mask's bounding "
        "box grown by half a top window (the window is "
        f"{result['window_px'][0]}x{result['window_px'][1]} px) on each side. Heat hottest on it: the snapshot's "
        "hottest spot (R - B of the jet overlay, averaged over a window) lies in that grown box.",
    ]
    for release, run in result["runs"].items():
        s = run["summary"]
        lines += [
            "",
            f"## release_frames {release}" + (" (default)" if release == "25" else ""),
            "",
            f"{s['events']} events on {s['videos_with_event']} of {s['videos']} videos ({s['videos_with_one_event']} "
            f"with exactly one); box on the anomaly in {s['events_box_hit']} of {s['events']} events "
            f"({s['events_box_hit_share']}); median delay {s['median_delay_frames']} frames, max "
            f"{s['max_delay_frames']}; mean IoU {s['mean_iou']}, precision {s['mean_precision']}, recall "
            f"{s['mean_recall']}; the snapshot's hottest spot on the anomaly in {s['snapshots_hottest_on_anomaly']}; "
            f"{s['clip_decoded']} clips decoded.",
            "",
            "| video | GT | events (start-end reason) | delay frames (s) | IoU | P | R | box hit | in-region | "
            "mask IoU | heat hottest on it | clip frames |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, v in run["videos"].items():
            evs = ", ".join(f"{e['start_frame']}-{e['end_frame']} {e['end_reason']}" for e in v["events"]) or "none"
            delay = "-" if v["delay_frames"] is None else f"{v['delay_frames']} ({v['delay_s']:.2f})"
            hit = "/".join("yes" if e["box_vs_mask"]["hit"] else "no" for e in v["events"]) or "-"
            region = "/".join(f"{e['box_vs_mask']['in_region']:.2f}" for e in v["events"]) or "-"
            miou = "/".join(f"{e['box_vs_mask']['mask_iou']:.2f}" for e in v["events"]) or "-"
            hot = "/".join("yes" if e.get("heat", {}).get("hottest_on_anomaly") else "no" for e in v["events"]) or "-"
            clips = "/".join(str(e.get("clip", {}).get("frames", "-")) for e in v["events"]) or "-"
            fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
            lines.append(f"| {name} | {v['gt'][0]}-{v['gt'][1]} | {evs} | {delay} | {fmt(v['iou'])} | "
                         f"{fmt(v['precision'])} | {fmt(v['recall'])} | {hit} | {region} | {miou} | {hot} | {clips} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--data", type=Path, default=PED2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--videos", default="", help="comma-separated test videos (default: all 12)")
    parser.add_argument("--release", default="25,10", help="release_frames values, one run each (25: default)")
    args = parser.parse_args(argv)
    names = [n for n in args.videos.split(",") if n] or test_video_names(args.data)
    videos = {name: load_video(name, args.data) for name in names}
    began = time.perf_counter()
    runs: dict[str, Any] = {}
    window = [0, 0]
    with bench_server(weights=args.weights) as server, server.client() as client:
        for n, release in enumerate(int(r) for r in args.release.split(",")):
            events = None if release == 25 else {"release_frames": release}
            per_video = {}
            for name, video in videos.items():
                # Each run a day apart: no two streams share capture times (and no cooldown crosses runs).
                base = time.time() - BASE_AGE_S - n * 86_400
                _, frames, at_end, stored = run_video(client, video, base, events, name=f"ped2-{name}-r{release}")
                per_video[name] = measure(client, video, frames, at_end, stored)
                window = per_video[name]["window_px"] or window
                print(f"release {release} video {name}: "
                      f"{[(e['start_frame'], e['end_frame'], e['end_reason']) for e in per_video[name]['events']]} "
                      f"delay {per_video[name]['delay_frames']} IoU {per_video[name]['iou']}", flush=True)
            runs[str(release)] = {"videos": per_video, "summary": summary(per_video)}
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(),
        "weights": str(args.weights), "fps": FPS, "window_px": window,
        "seconds": round(time.perf_counter() - began, 1), "runs": runs,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "events_ped2.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "events_ped2.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
