"""Datasets of frame folders or video files, frame labels, and the one preprocessing function.

Layout: ROOT/{training,testing}/frames/VIDEO/NNN.(jpg|png|tif), or ROOT/{training,testing}/videos/*.avi|mp4
(also video files directly under ROOT/{split}/frames or ROOT/{split}). Labels: ROOT/testing/ground_truth.json
as {"videos": {"01": {"frames": 180, "anomalous": [[60, 179]]}, ...}} (inclusive, 0-based).

A `Video` may also be a part of one (frames [start, stop)): the training head or the held-out tail of
plain footage (model/footage.py resolves `--data` into videos and decides the parts).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from .network import DESDnetConfig
from .progress import Progress, silent

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov")


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file and the problem."""


def resize_frame(frame: np.ndarray, config: DESDnetConfig) -> np.ndarray:
    """Decoded BGR/gray uint8 frame (H, W[, 3]) -> uint8 (S, S, C) at the model's size and channels.

    The service, the trainer and the evaluator all go through this function, so a frame pushed over
    HTTP scores exactly as the same frame read from disk.
    """
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if config.channels == 1 and frame.shape[2] == 3:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif config.channels == 3 and frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif config.channels == 3:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    size = config.image_size
    resized = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return resized.reshape(size, size, config.channels)


def frame_sort_key(path: Path) -> tuple[object, ...]:
    """Natural order of frame files: 2.jpg before 10.jpg (zero-padded names sort as before)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def to_model_range(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., S, S, C) -> float32 (..., C, S, S) in [-1, 1]."""
    x = frames.astype(np.float32) / 127.5 - 1.0
    return np.moveaxis(x, -1, -3)


def read_image(path: Path) -> np.ndarray:
    try:
        frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DatasetError(f"{path}: cannot decode this image ({str(exc).strip()})") from exc
    if frame is None:
        raise DatasetError(f"{path}: cannot decode this image (missing, unreadable or corrupt)")
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        if frame.shape[2] != 2:
            raise DatasetError(f"{path}: {frame.shape[2]} channels; expected gray, BGR or BGRA")
        frame = frame[:, :, 0]  # gray + alpha
    if frame.dtype != np.uint8:
        frame = cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return frame


@dataclass(frozen=True)
class Video:
    """One video: either an ordered list of frame files or one video file, optionally only frames
    [start, stop) of it (a part: the training head or the held-out tail of plain footage)."""

    name: str
    frame_paths: tuple[Path, ...] = ()
    video_path: Path | None = None
    start: int = 0
    stop: int | None = None  # exclusive; None: to the end

    @property
    def source(self) -> Path:
        return self.video_path or self.frame_paths[0].parent

    @property
    def label(self) -> str:
        """The name, with the frame range of a part: `scene.mp4[3519:4140]`."""
        if self.start == 0 and self.stop is None:
            return self.name
        return f"{self.name}[{self.start}:{'' if self.stop is None else self.stop}]"

    def part(self, start: int, stop: int | None) -> Video:
        """Frames [start, stop) of this (whole) video."""
        return replace(self, start=start, stop=stop)

    def estimated_frames(self) -> int | None:
        """Frames this video (or part) holds: exact for frame files, the container's claim for a
        video file (for progress bars only; None when it does not say)."""
        if self.video_path is None:
            count = len(self.frame_paths)
        else:
            capture = cv2.VideoCapture(str(self.video_path))
            try:
                count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
            finally:
                capture.release()
            if count <= 0:
                return None
        stop = count if self.stop is None else min(self.stop, count)
        return max(0, stop - self.start)

    def read(self, config: DESDnetConfig, progress: Progress = silent) -> np.ndarray:
        """The frames (of the part) resized: uint8 (N, S, S, C)."""
        total = self.estimated_frames()
        desc = f"reading {self.label}"
        if self.video_path is not None:
            frames = [resize_frame(f, config)
                      for f in progress(self._decode(), total=total, desc=desc, unit="frame")]
        else:
            paths = self.frame_paths[self.start : self.stop]
            frames = [resize_frame(read_image(p), config)
                      for p in progress(paths, total=len(paths), desc=desc, unit="frame")]
        if self.stop is not None and self.start + len(frames) < self.stop:
            raise DatasetError(
                f"{self.source}: {self.start + len(frames)} frames, fewer than the {self.stop} "
                f"its part {self.label} needs (the footage changed?)"
            )
        if not frames:
            raise DatasetError(f"{self.source}: no frames could be read")
        return np.stack(frames)

    def _decode(self) -> Iterator[np.ndarray]:
        """Decoded BGR frames [start, stop) of the video file."""
        capture = cv2.VideoCapture(str(self.video_path))
        try:
            if not capture.isOpened():
                raise DatasetError(f"{self.video_path}: cannot open this video file")
            index = 0
            while self.stop is None or index < self.stop:
                if index < self.start:  # skipped frames are decoded but not converted
                    if not capture.grab():
                        return
                else:
                    ok, frame = capture.read()
                    if not ok:
                        return
                    yield frame
                index += 1
        finally:
            capture.release()


def split_folder(root: Path, split: str) -> Path:
    """ROOT/split, checked: a missing dataset root and a missing split get their own message."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    folder = root / split
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: no such folder (expected {root}/{split}/frames/VIDEO/NNN.jpg or video files)"
        )
    return folder


def list_videos(split_dir: Path) -> list[Video]:
    """The videos of one split folder, sorted by name."""
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: no such folder")
    base = split_dir / "frames" if (split_dir / "frames").is_dir() else split_dir
    videos: list[Video] = []
    for entry in sorted(base.iterdir()):
        if entry.is_dir():
            frames = tuple(
                sorted(
                    (p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                    key=frame_sort_key,
                )
            )
            if frames:
                videos.append(Video(entry.name, frame_paths=frames))
        elif entry.suffix.lower() in VIDEO_SUFFIXES:
            videos.append(Video(entry.stem, video_path=entry))
    if not videos and (split_dir / "videos").is_dir():
        return list_videos(split_dir / "videos")
    if not videos:
        raise DatasetError(
            f"{base}: no videos found (expected VIDEO/NNN.jpg frame folders or .avi/.mp4 files)"
        )
    return videos


def held_out_videos(videos: list[Video], training: dict[str, object]) -> list[Video]:
    """The held-out calibration videos named in a weights file's training metadata, among `videos`
    (the last video when the file names none, as `vad train` holds out by default).

    Weights trained on plain footage also record each held-out tail's frames
    (`calibration_frames`: {name: [start, stop]}); those videos come back as that part.
    """
    names = [str(n) for n in training.get("calibration_videos") or []]  # type: ignore[attr-defined]
    ranges = training.get("calibration_frames") or {}
    held = [v for v in videos if v.name in names] if names else videos[-1:]
    if not held:
        folder = videos[0].source.parent if videos else "training split"
        raise DatasetError(f"{folder}: none of the calibration videos {names} named in the weights is there")
    if isinstance(ranges, dict):
        held = [v.part(*ranges[v.name]) if v.name in ranges else v for v in held]
    return held


def file_list_hash(videos: list[Video]) -> str:
    """sha256 over the relative file names: pins which files a model was trained on."""
    digest = hashlib.sha256()
    for video in videos:
        paths = video.frame_paths or ((video.video_path,) if video.video_path else ())
        for p in paths:
            digest.update(f"{video.name}/{p.name}\n".encode())
    return digest.hexdigest()


def load_labels(root: Path, videos: list[Video], frame_counts: list[int]) -> list[np.ndarray]:
    """Per-video 0/1 frame labels from ROOT/testing/ground_truth.json, checked against the frames."""
    path = root / "testing" / "ground_truth.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing (frame-level labels are needed to evaluate)")
    try:
        data = json.loads(path.read_text())
        table = data["videos"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a ground-truth file ({exc})") from exc
    labels = []
    for video, count in zip(videos, frame_counts, strict=True):
        if video.name not in table:
            raise DatasetError(f"{path}: no labels for video {video.name!r}")
        entry = table[video.name]
        try:
            declared = int(entry.get("frames", count))
            intervals = [(int(start), int(end)) for start, end in entry.get("anomalous", [])]
        except (AttributeError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path}: video {video.name!r} has a malformed entry {entry!r} "
                '(expected {"frames": N, "anomalous": [[first, last], ...]})'
            ) from exc
        if declared != count:
            raise DatasetError(
                f"{path}: video {video.name!r} has {count} frames but the labels declare {declared}"
            )
        label = np.zeros(count, dtype=np.int64)
        for start, end in intervals:
            if not 0 <= start <= end < count:
                raise DatasetError(
                    f"{path}: video {video.name!r} interval [{start}, {end}] lies outside its {count} frames"
                )
            label[start : end + 1] = 1
        labels.append(label)
    return labels


@dataclass
class FrameSet:
    """Frames of a split held in memory as uint8 (N, S, S, C) per video, with clip indices."""

    videos: list[Video]
    frames: list[np.ndarray]

    @classmethod
    def load(cls, split_dir: Path | None, config: DESDnetConfig, videos: list[Video] | None = None,
             progress: Progress = silent) -> FrameSet:
        """Read `videos` (default: every video of `split_dir`); each needs at least one clip."""
        if videos is None:
            if split_dir is None:
                raise ValueError("FrameSet.load needs a split folder or a list of videos")
            videos = list_videos(split_dir)
        frames = []
        for video in videos:
            array = video.read(config, progress)
            if len(array) < config.frames:
                raise DatasetError(
                    f"{video.source}: {len(array)} frames, fewer than the {config.frames} a clip needs"
                )
            frames.append(array)
        return cls(videos, frames)

    def clip_index(self, frames: int) -> np.ndarray:
        """(N, 2) rows of (video, t) for every clip whose current frame t has t >= frames - 1."""
        rows = [
            (v, t) for v, array in enumerate(self.frames) for t in range(frames - 1, len(array))
        ]
        return np.asarray(rows, dtype=np.int64)

    def clips(self, index: np.ndarray, frames: int) -> np.ndarray:
        """Clip batch as float32 (B, T*C, S, S) in [-1, 1] for the (video, t) rows given."""
        stacks = [self.frames[v][t - frames + 1 : t + 1] for v, t in index]
        x = to_model_range(np.stack(stacks))  # (B, T, C, S, S)
        b, t, c, h, w = x.shape
        return np.ascontiguousarray(x.reshape(b, t * c, h, w))


class TensorClips:
    """A FrameSet's frames as one uint8 tensor (N, C, S, S) on a device, gathering clip batches there.

    Frames travel to the device once; each clip batch is an index gather, not a host copy, and
    converts exactly as `to_model_range` does (x / 127.5 - 1 in float32).
    """

    def __init__(self, frames: FrameSet, clip_frames: int, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.clip_frames = clip_frames
        self.frames = torch.cat([torch.from_numpy(a).permute(0, 3, 1, 2) for a in frames.frames])
        self.frames = self.frames.contiguous().to(self.device)
        lengths = [len(a) for a in frames.frames]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    def clips(self, index: np.ndarray) -> torch.Tensor:
        """(video, t) rows -> float32 (B, T*C, S, S) in [-1, 1] on the device."""
        t = self.clip_frames
        first = self.offsets[index[:, 0]] + index[:, 1] - (t - 1)
        rows = torch.from_numpy(first[:, None] + np.arange(t)).to(self.device)
        x = self.frames[rows].float() / 127.5 - 1.0  # (B, T, C, S, S)
        return x.flatten(1, 2)
