"""bench/frames.py: the JPEG frames pushed per stream, synthetic or read from frame folders."""

from __future__ import annotations

from pathlib import Path

from bench.frames import load_stream_frames


def test_load_stream_frames(tmp_path: Path) -> None:
    videos, described = load_stream_frames(None, 3)
    assert len(videos) == 3 and videos[0][0][:2] == b"\xff\xd8" and "synthetic" in described
    for name in ("01", "02"):
        (tmp_path / "testing" / "frames" / name).mkdir(parents=True)
        for t in range(3):
            (tmp_path / "testing" / "frames" / name / f"{t:03d}.jpg").write_bytes(videos[0][t])
    videos, described = load_stream_frames(tmp_path, 3)
    assert [len(v) for v in videos] == [3, 3, 3] and "videos 01, 02, 01" in described
