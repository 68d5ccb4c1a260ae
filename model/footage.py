"""What `vad train --data` and `vad recalibrate --data` accept, and which frames calibrate the score.

`--data` is one of:

- a **dataset root** holding `training/` (the layout of model/data.py): its training videos; the last
  `calibration_videos` of them by name (default 1) are held out whole for calibration, as always;
- a **video file** (.mp4, .avi, .mkv, .mov): one video;
- a **folder of video files**: one video per file, in natural name order;
- a **folder of image frames**: one video, frames in natural name order;
- a **folder of frame folders**: one video per folder.

Everything but the dataset root is *plain footage*: every video's tail is held out for calibration.
With several videos each one gives its own tail (its last `share` of frames), so the calibration sees
every recording's light and traffic, not only the last one's; the share is raised for short footage
so that at least `MIN_HOLDOUT_FRAMES` are held out in all; every tail is at least one clip long, and
a video shorter than two clips is trained on whole.
What was held out is recorded in the weights' training metadata (`calibration_videos` and
`calibration_frames`: {name: [start, stop]}), with a fingerprint of the footage (`footage`), so that
`vad recalibrate --data` on the same footage scores the same tail again (`calibration_data`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .data import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    DatasetError,
    FrameSet,
    Video,
    file_list_hash,
    frame_sort_key,
    held_out_videos,
    list_videos,
    split_folder,
)
from .network import DESDnetConfig
from .progress import Progress, silent

#: Share of each plain-footage video held out (its tail) to calibrate the causal score.
HOLDOUT_SHARE = 0.15
#: Fewest frames held out in all: the calibration's mean, spread and maximum need a sample.
MIN_HOLDOUT_FRAMES = 50
#: Fewest frames left to train on.
MIN_TRAINING_FRAMES = 50

DATASET = "dataset"
VIDEO_FILE = "video file"
VIDEO_FOLDER = "folder of videos"
FRAME_FOLDER = "folder of frames"
FRAME_FOLDERS = "folder of frame folders"


@dataclass(frozen=True)
class Footage:
    """`--data` resolved: what kind of input it is and its whole videos, in order."""

    path: Path
    kind: str
    videos: tuple[Video, ...]

    @property
    def plain(self) -> bool:
        """Plain footage (not a dataset root): calibration holds out each video's tail."""
        return self.kind != DATASET

    def describe(self) -> str:
        count = len(self.videos)
        return f"{self.path} ({self.kind}, {count} video{'s' if count != 1 else ''})"


def _images_in(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                        key=frame_sort_key))


def find_footage(path: Path | str) -> Footage:
    """Resolve `--data` (see the module docstring); raises DatasetError naming the path."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset folder, video file or folder of footage")
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise DatasetError(
                f"{path}: not a video file (expected {', '.join(VIDEO_SUFFIXES)}) nor a folder of footage"
            )
        return Footage(path, VIDEO_FILE, (Video(path.name, video_path=path),))
    if (path / "training").is_dir():
        return Footage(path, DATASET, tuple(list_videos(split_folder(path, "training"))))
    entries = sorted(path.iterdir(), key=frame_sort_key)
    images = _images_in(path)
    files = [p for p in entries if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    folders = [(d, frames) for d in entries if d.is_dir() for frames in [_images_in(d)] if frames]
    kinds = [k for k, found in (("image frames", images), ("video files", files), ("frame folders", folders))
             if found]
    if len(kinds) > 1:
        raise DatasetError(f"{path}: holds both {' and '.join(kinds)}; keep one kind of footage per folder")
    if images:
        return Footage(path, FRAME_FOLDER, (Video(path.name, frame_paths=images),))
    if files:
        return Footage(path, VIDEO_FOLDER, tuple(Video(p.name, video_path=p) for p in files))
    if folders:
        return Footage(path, FRAME_FOLDERS, tuple(Video(d.name, frame_paths=f) for d, f in folders))
    if (path / "frames").is_dir() or (path / "videos").is_dir():  # a split folder passed directly
        videos = list_videos(path)
        kind = VIDEO_FOLDER if all(v.video_path for v in videos) else FRAME_FOLDERS
        return Footage(path, kind, tuple(videos))
    raise DatasetError(
        f"{path}: no footage found: no video files, image frames or folders of frames in it, "
        f"and {path / 'training'}: no such folder (a dataset root holds training/)"
    )


def split_calibration(videos: list[Video], n: int) -> tuple[list[Video], list[Video]]:
    """Dataset layout: the last `n` videos are held out (none when that would leave none to train)."""
    if n <= 0 or len(videos) <= n:
        return videos, []
    return videos[:-n], videos[-n:]


def tail_starts(
    counts: list[int],
    share: float = HOLDOUT_SHARE,
    clip: int = 5,
    min_holdout: int = MIN_HOLDOUT_FRAMES,
    min_training: int = MIN_TRAINING_FRAMES,
) -> list[int]:
    """The first held-out frame of each video of `counts` frames (the rule of the module docstring).

    Raises ValueError with the reason when the footage is too short; callers name the path.
    """
    if not 0 < share <= 0.5:
        raise ValueError(f"the held-out share must lie in (0, 0.5], not {share:g}")
    total = sum(counts)
    if total < min_training + min_holdout:
        raise ValueError(
            f"{total} frames in all, too few to train on and hold out a calibration tail "
            f"(at least {min_training + min_holdout}: {min_training} to train on, {min_holdout} held out)"
        )
    effective = max(share, min_holdout / total)
    held = [0 if n < 2 * clip else min(n - clip, max(clip, math.ceil(effective * n))) for n in counts]
    kept = total - sum(held)
    if sum(held) < min_holdout or kept < min_training:
        raise ValueError(
            f"{total} frames in {len(counts)} videos: holding out each video's tail leaves {kept} frames "
            f"to train on and {sum(held)} to calibrate (at least {min_training} and {min_holdout})"
        )
    return [n - h for n, h in zip(counts, held, strict=True)]


def fingerprint(video: Video) -> dict[str, int]:
    """Files and bytes of a whole video: tells recalibration whether footage is the one trained on."""
    paths = (video.video_path,) if video.video_path else video.frame_paths
    return {"files": len(paths), "bytes": sum(p.stat().st_size for p in paths if p is not None)}


@dataclass
class TrainingData:
    """The frames to train on and those to calibrate on (None: calibrate on the training frames,
    as a dataset layout with `calibration_videos` 0 does)."""

    footage: Footage
    train: FrameSet
    calibration: FrameSet | None
    holdout_share: float | None = None  # plain footage only

    def metadata(self) -> dict[str, object]:
        """The training metadata keys that say what was trained on and what was held out."""
        held = self.calibration.videos if self.calibration is not None else []
        meta: dict[str, object] = {
            "data": str(self.footage.path),
            "data_kind": self.footage.kind,
            "training_videos": [v.name for v in self.train.videos],
            "calibration_videos": [v.name for v in held],
            "file_list_sha256": file_list_hash(list(self.footage.videos)),
        }
        if self.footage.plain:
            meta["training_frames"] = {v.name: [v.start, v.stop] for v in self.train.videos}
            meta["calibration_frames"] = {v.name: [v.start, v.stop] for v in held}
            meta["holdout_share"] = self.holdout_share
            counts = {v.name: v.start + len(a) for v, a in zip(self.train.videos, self.train.frames, strict=True)}
            counts.update({v.name: v.stop for v in held})
            meta["footage"] = [{"name": v.name, "frames": counts[v.name], **fingerprint(v)}
                               for v in self.footage.videos]
        return meta

    def describe_holdout(self) -> str:
        """One line for people: what calibrates the score."""
        if self.calibration is None:
            return "no video held out: calibrated on the training frames"
        frames = sum(len(a) for a in self.calibration.frames)
        if not self.footage.plain:
            return f"held out for calibration: {', '.join(v.name for v in self.calibration.videos)} ({frames} frames)"
        total = frames + sum(len(a) for a in self.train.frames)
        return (f"held out for calibration: the last {frames} of {total} frames "
                f"({', '.join(v.label for v in self.calibration.videos)})")


def load_training_data(
    path: Path | str,
    config: DESDnetConfig,
    calibration_videos: int = 1,
    holdout_share: float = HOLDOUT_SHARE,
    progress: Progress = silent,
) -> TrainingData:
    """Resolve `--data`, read every frame (resized for `config`) and split off the calibration frames.

    Dataset root: the last `calibration_videos` videos. Plain footage: each video's tail
    (`tail_starts`); the footage is decoded once and split in memory.
    """
    footage = find_footage(path)
    if not footage.plain:
        train_videos, held = split_calibration(list(footage.videos), calibration_videos)
        train = FrameSet.load(None, config, train_videos, progress)
        calibration = FrameSet.load(None, config, held, progress) if held else None
        return TrainingData(footage, train, calibration)
    whole = FrameSet.load(None, config, list(footage.videos), progress)
    counts = [len(a) for a in whole.frames]
    try:
        starts = tail_starts(counts, holdout_share, config.frames)
    except ValueError as exc:
        raise DatasetError(f"{footage.path}: {exc}") from None
    train = FrameSet([v.part(0, s) for v, s in zip(footage.videos, starts, strict=True)],
                     [a[:s] for a, s in zip(whole.frames, starts, strict=True)])
    tails = [(v.part(s, n), a[s:]) for v, a, s, n in zip(footage.videos, whole.frames, starts, counts, strict=True)
             if s < n]
    calibration = FrameSet([v for v, _ in tails], [a for _, a in tails])
    return TrainingData(footage, train, calibration, holdout_share)


def trained_on(footage: Footage, training: dict[str, object]) -> bool:
    """Whether weights with this training metadata were trained on this plain footage: the same
    videos by name, of the same files and bytes."""
    recorded = training.get("footage")
    if not footage.plain or not isinstance(recorded, list) or not training.get("calibration_frames"):
        return False
    mine = {v.name: fingerprint(v) for v in footage.videos}
    theirs = {str(r.get("name")): {"files": r.get("files"), "bytes": r.get("bytes")}
              for r in recorded if isinstance(r, dict)}
    return mine == theirs


def calibration_data(
    path: Path | str, training: dict[str, object], config: DESDnetConfig, progress: Progress = silent
) -> tuple[Footage, FrameSet, str]:
    """The frames `vad recalibrate --data` scores, and a line saying which.

    Dataset root: the held-out videos named in the weights (`held_out_videos`). Plain footage: the
    tail the weights held out when they were trained on this very footage (`trained_on`); any other
    footage was never trained on, so all of it calibrates.
    """
    footage = find_footage(path)
    if not footage.plain:
        held = held_out_videos(list(footage.videos), training)
        frames = FrameSet.load(None, config, held, progress)
        what = f"held-out videos {', '.join(v.label for v in held)}"
    elif trained_on(footage, training):
        held = held_out_videos(list(footage.videos), training)
        frames = FrameSet.load(None, config, held, progress)
        what = f"the tail held out in training, {', '.join(v.label for v in held)}"
    else:
        frames = FrameSet.load(None, config, list(footage.videos), progress)
        what = f"all of {footage.describe()}: the weights were not trained on this footage"
    return footage, frames, f"{what}; {sum(len(a) for a in frames.frames)} frames"
