"""`--data` resolved into videos (model/footage.py), the tail held out of plain footage, and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.data import DatasetError, FrameSet, Video, held_out_videos
from model.footage import (
    DATASET,
    FRAME_FOLDER,
    FRAME_FOLDERS,
    VIDEO_FILE,
    VIDEO_FOLDER,
    calibration_data,
    find_footage,
    load_training_data,
    tail_starts,
    trained_on,
)
from tests.support.data import TINY
from tests.support.synthetic import make_video


def write_avi(path: Path, frames: int, seed: int = 0) -> Path:
    """A lossless-enough MJPEG .avi of synthetic footage (exact frame count, decodes everywhere)."""
    video, _ = make_video(frames, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (video.shape[2], video.shape[1]))
    for frame in video:
        writer.write(frame)
    writer.release()
    return path


def write_frames(folder: Path, frames: int, seed: int = 0) -> Path:
    video, _ = make_video(frames, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(video):
        cv2.imwrite(str(folder / f"{t}.png"), frame)  # unpadded names: natural order matters
    return folder


# ---- each kind of input ----------------------------------------------------------------------------


def test_a_video_file(tmp_path: Path) -> None:
    footage = find_footage(write_avi(tmp_path / "scene.avi", 120))
    assert footage.kind == VIDEO_FILE and footage.plain
    (video,) = footage.videos
    assert video.name == "scene.avi" and video.video_path == tmp_path / "scene.avi"


def test_a_folder_of_videos_in_natural_order(tmp_path: Path) -> None:
    for name in ("10.avi", "2.avi"):
        write_avi(tmp_path / "clips" / name, 12)
    (tmp_path / "clips" / "notes.txt").write_text("ignored")
    footage = find_footage(tmp_path / "clips")
    assert footage.kind == VIDEO_FOLDER
    assert [v.name for v in footage.videos] == ["2.avi", "10.avi"]


def test_a_folder_of_frames_is_one_video(tmp_path: Path) -> None:
    folder = write_frames(tmp_path / "cam", 12)
    footage = find_footage(folder)
    assert footage.kind == FRAME_FOLDER
    (video,) = footage.videos
    assert video.name == "cam" and [p.name for p in video.frame_paths[:3]] == ["0.png", "1.png", "2.png"]
    assert video.frame_paths[-1].name == "11.png"


def test_a_folder_of_frame_folders(tmp_path: Path) -> None:
    for name in ("morning", "evening"):
        write_frames(tmp_path / "cam" / name, 8)
    (tmp_path / "cam" / "empty").mkdir()
    footage = find_footage(tmp_path / "cam")
    assert footage.kind == FRAME_FOLDERS
    assert [v.name for v in footage.videos] == ["evening", "morning"]


def test_a_dataset_root_and_a_split_folder(synthetic_root: Path) -> None:
    footage = find_footage(synthetic_root)
    assert footage.kind == DATASET and not footage.plain
    assert [v.name for v in footage.videos] == ["01", "02"]
    split = find_footage(synthetic_root / "training")  # frames/VIDEO/... without the root: plain footage
    assert split.kind == FRAME_FOLDERS and [v.name for v in split.videos] == ["01", "02"]


# ---- the tail held out -------------------------------------------------------------------------------


def test_tail_rule() -> None:
    assert tail_starts([1000]) == [850]  # 15 %
    assert tail_starts([120]) == [70]  # at least 50 frames held out
    assert tail_starts([300, 100]) == [255, 85]  # each video's own tail
    assert tail_starts([100, 100, 100]) == [83, 83, 83]  # share raised to 50 / 300, rounded up
    assert tail_starts([1000], share=0.2) == [800]
    assert tail_starts([2000, 12]) == [1700, 7]  # every tail is at least one clip long
    assert tail_starts([2000, 9]) == [1700, 9]  # shorter than two clips: trained on whole
    with pytest.raises(ValueError, match="99 frames in all, too few"):
        tail_starts([99])
    with pytest.raises(ValueError, match="share must lie"):
        tail_starts([1000], share=0.0)


def test_a_video_files_tail_is_held_out(tmp_path: Path) -> None:
    path = write_avi(tmp_path / "scene.avi", 120)
    data = load_training_data(path, TINY)
    whole = Video("scene.avi", video_path=path).read(TINY)
    (train,), (held,) = data.train.videos, data.calibration.videos
    assert (train.label, held.label) == ("scene.avi[0:70]", "scene.avi[70:120]")
    np.testing.assert_array_equal(data.train.frames[0], whole[:70])
    np.testing.assert_array_equal(data.calibration.frames[0], whole[70:])
    meta = data.metadata()
    assert meta["data_kind"] == VIDEO_FILE and meta["calibration_videos"] == ["scene.avi"]
    assert meta["training_frames"] == {"scene.avi": [0, 70]} and meta["calibration_frames"] == {"scene.avi": [70, 120]}
    assert meta["footage"] == [{"name": "scene.avi", "frames": 120, "files": 1, "bytes": path.stat().st_size}]
    # What the weights record finds the same part again, read from the file (frames 70..119 only).
    (part,) = held_out_videos(list(find_footage(path).videos), meta)
    np.testing.assert_array_equal(FrameSet.load(None, TINY, [part]).frames[0], whole[70:])


def test_each_videos_tail_is_held_out_of_frame_folders(tmp_path: Path) -> None:
    for name, count in (("a", 100), ("b", 60)):
        write_frames(tmp_path / "cam" / name, count, seed=len(name) + count)
    data = load_training_data(tmp_path / "cam", TINY)
    # share raised to 50 / 160: a holds out ceil(31.25) = 32 frames, b ceil(18.75) = 19
    assert [v.label for v in data.calibration.videos] == ["a[68:100]", "b[41:60]"]
    assert [v.label for v in data.train.videos] == ["a[0:68]", "b[0:41]"]
    assert [len(a) for a in data.calibration.frames] == [32, 19]
    part = data.calibration.videos[1]
    np.testing.assert_array_equal(part.read(TINY), data.calibration.frames[1])  # frame files 41..59
    assert "the last 51 of 160 frames" in data.describe_holdout()


def test_a_dataset_root_holds_out_its_last_videos(synthetic_root: Path) -> None:
    data = load_training_data(synthetic_root, TINY)
    assert [v.label for v in data.train.videos] == ["01"] and [v.label for v in data.calibration.videos] == ["02"]
    meta = data.metadata()
    assert "calibration_frames" not in meta and meta["calibration_videos"] == ["02"]
    assert load_training_data(synthetic_root, TINY, calibration_videos=0).calibration is None


# ---- recalibration finds the tail on the footage trained on, and only there --------------------------


def test_calibration_data_is_the_tail_only_on_the_same_footage(tmp_path: Path) -> None:
    path = write_avi(tmp_path / "scene.avi", 120)
    meta = load_training_data(path, TINY).metadata()
    footage = find_footage(path)
    assert trained_on(footage, meta)
    _, frames, what = calibration_data(path, meta, TINY)
    assert [v.label for v in frames.videos] == ["scene.avi[70:120]"] and "the tail held out in training" in what

    other = write_avi(tmp_path / "other" / "scene.avi", 100, seed=9)  # same name, other content
    assert not trained_on(find_footage(other), meta)
    _, frames, what = calibration_data(other, meta, TINY)
    assert [v.label for v in frames.videos] == ["scene.avi"] and len(frames.frames[0]) == 100
    assert "not trained on this footage" in what and what.endswith("100 frames")


# ---- errors: one line naming the path and the problem ------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such dataset folder, video file or folder of footage") as info:
        find_footage(tmp_path / "absent.mp4")
    assert str(tmp_path / "absent.mp4") in str(info.value)


def test_not_a_video_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DatasetError, match="not a video file"):
        find_footage(text)


def test_unreadable_video(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with pytest.raises(DatasetError) as info:
        load_training_data(bad, TINY)
    assert str(bad) in str(info.value) and ("cannot open" in str(info.value) or "no frames" in str(info.value))


def test_footage_too_short_to_train_and_hold_out(tmp_path: Path) -> None:
    path = write_avi(tmp_path / "short.avi", 60)
    with pytest.raises(DatasetError, match="60 frames in all, too few to train on and hold out") as info:
        load_training_data(path, TINY)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_a_video_shorter_than_a_clip(tmp_path: Path) -> None:
    write_avi(tmp_path / "clips" / "a.avi", 120)
    write_avi(tmp_path / "clips" / "b.avi", 3)
    with pytest.raises(DatasetError, match="3 frames, fewer than the 5 a clip needs") as info:
        load_training_data(tmp_path / "clips", TINY)
    assert str(tmp_path / "clips" / "b.avi") in str(info.value)


def test_mixed_and_empty_folders(tmp_path: Path) -> None:
    write_avi(tmp_path / "mixed" / "a.avi", 10)
    write_frames(tmp_path / "mixed", 5)
    with pytest.raises(DatasetError, match="holds both image frames and video files"):
        find_footage(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no footage found") as info:
        find_footage(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)


def test_a_part_beyond_the_end_of_changed_footage(tmp_path: Path) -> None:
    path = write_avi(tmp_path / "scene.avi", 120)
    meta = load_training_data(path, TINY).metadata()
    shutil.copy(write_avi(tmp_path / "short.avi", 80), path)  # the file shrank since training
    (part,) = held_out_videos(list(find_footage(path).videos), meta)
    with pytest.raises(DatasetError, match="fewer than the 120 its part scene.avi\\[70:120\\] needs"):
        part.read(TINY)
