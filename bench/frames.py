"""The JPEG frames the load generator pushes (bench/load_generator.py): one video per stream, read
from a dataset's test split or a folder of frame folders, or synthesised."""

from __future__ import annotations

from pathlib import Path


def load_stream_frames(source: Path | None, streams: int, limit: int = 400) -> tuple[list[list[bytes]], str]:
    """JPEG bytes per stream: one video each (cycling when there are fewer videos than streams).

    source: a dataset root (its testing/frames/NN/*.jpg are used), a folder of video frame folders,
    or None for synthetic 360x240 frames. At most `limit` frames per video are kept in memory.
    Returns the frames and a description of where they came from.
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
