from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.data import (
    DatasetError,
    FrameSet,
    TensorClips,
    Video,
    file_list_hash,
    list_videos,
    load_labels,
    read_image,
    resize_frame,
    split_folder,
    to_model_range,
)
from model.network import DESDnetConfig
from tests.support.data import TINY
from tests.support.training import copy_dataset

RGB = TINY.with_(channels=3)


# ---- preprocessing -------------------------------------------------------------------------


def test_resize_frame_channels_and_size() -> None:
    bgr = np.zeros((24, 36, 3), np.uint8)
    bgr[:, :, 0] = 200  # blue in OpenCV's BGR order
    rgb = resize_frame(bgr, RGB)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert (rgb[:, :, 2] == 200).all() and (rgb[:, :, :2] == 0).all()  # blue is last in RGB
    gray = resize_frame(bgr, TINY)
    assert gray.shape == (32, 32, 1)
    assert (gray == cv2.cvtColor(np.full((1, 1, 3), (200, 0, 0), np.uint8), cv2.COLOR_BGR2GRAY)[0, 0]).all()
    plain = np.full((24, 36), 77, np.uint8)
    assert (resize_frame(plain, TINY) == 77).all() and resize_frame(plain, TINY).shape == (32, 32, 1)
    assert (resize_frame(plain, RGB) == 77).all() and resize_frame(plain, RGB).shape == (32, 32, 3)
    bgra = np.dstack([bgr, np.full((24, 36), 255, np.uint8)])
    assert np.array_equal(resize_frame(bgra, RGB), rgb)


def test_to_model_range() -> None:
    frames = np.zeros((2, 4, 4, 3), np.uint8)  # (N, S, S, C)
    frames[:, :, :, 1] = 255
    frames[1, 0, 0, 2] = 51
    x = to_model_range(frames)
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32  # (N, C, S, S)
    assert (x[:, 0] == -1).all() and (x[:, 1] == 1).all()
    assert x[1, 2, 0, 0] == pytest.approx(51 / 127.5 - 1)


def test_read_image_16_bit_and_gray_with_alpha(tmp_path: Path) -> None:
    from PIL import Image

    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000))
    image = read_image(deep)
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.full((4, 4), 50, np.uint8), np.full((4, 4), 255, np.uint8)]), "LA").save(la)
    assert (resize_frame(read_image(la), TINY) == 50).all()


# ---- folders, clips, hashes ----------------------------------------------------------------


def test_list_videos_and_clips_of_the_synthetic_set(synthetic_root: Path) -> None:
    videos = list_videos(synthetic_root / "training")
    assert [v.name for v in videos] == ["01", "02"]
    assert all(len(v.frame_paths) == 40 for v in videos)
    frames = FrameSet.load(synthetic_root / "training", TINY, videos)
    assert frames.frames[0].shape == (40, 32, 32, 1)
    index = frames.clip_index(5)
    assert len(index) == 2 * 36 and tuple(index[0]) == (0, 4) and tuple(index[-1]) == (1, 39)
    clips = frames.clips(index[[0, 40]], 5)
    assert clips.shape == (2, 5, 32, 32) and clips.dtype == np.float32
    # Oldest first: channel k of the clip ending at t is frame t - 4 + k.
    expected = to_model_range(frames.frames[1][4 + 4 - 4 : 4 + 4 + 1])[:, 0]
    assert np.array_equal(clips[1], expected)


def test_frames_are_in_natural_order(tmp_path: Path) -> None:
    folder = tmp_path / "training" / "frames" / "v"
    folder.mkdir(parents=True)
    for t in range(12):  # unpadded names: lexicographic order would put 10 and 11 after 1
        cv2.imwrite(str(folder / f"{t}.png"), np.full((8, 8), t * 20, np.uint8))
    (video,) = list_videos(tmp_path / "training")
    assert [p.name for p in video.frame_paths] == [f"{t}.png" for t in range(12)]
    values = video.read(TINY)[:, 0, 0, 0]
    assert values.tolist() == [t * 20 for t in range(12)]


def test_video_files_are_read(tmp_path: Path) -> None:
    folder = tmp_path / "training" / "videos"
    folder.mkdir(parents=True)
    path = folder / "walk.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 40))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG .avi files")
    for t in range(7):
        writer.write(np.full((40, 48, 3), 30 * t, np.uint8))
    writer.release()
    (video,) = list_videos(tmp_path / "training")
    assert video.name == "walk" and video.video_path == path
    frames = video.read(TINY)
    assert frames.shape == (7, 32, 32, 1)
    assert abs(int(frames[3].mean()) - 90) <= 3


def test_file_list_hash_pins_the_file_names(synthetic_root: Path, tmp_path: Path) -> None:
    videos = list_videos(synthetic_root / "training")
    assert file_list_hash(videos) == file_list_hash(list_videos(synthetic_root / "training"))
    root = copy_dataset(synthetic_root, tmp_path / "copy")
    assert file_list_hash(list_videos(root / "training")) == file_list_hash(videos)
    (root / "training" / "frames" / "02" / "039.jpg").rename(root / "training" / "frames" / "02" / "040.jpg")
    assert file_list_hash(list_videos(root / "training")) != file_list_hash(videos)


def test_labels_of_the_synthetic_set(synthetic_root: Path) -> None:
    videos = list_videos(synthetic_root / "testing")
    labels = load_labels(synthetic_root, videos, [len(v.frame_paths) for v in videos])
    assert [int(y.sum()) for y in labels] == [20, 20]
    assert labels[0][:20].sum() == 0 and labels[0][20:].all()


# ---- UCSD Ped2 -------------------------------------------------------------------------------


def test_ped2_file_counts_and_labels(ped2_root: Path) -> None:
    training = list_videos(split_folder(ped2_root, "training"))
    testing = list_videos(split_folder(ped2_root, "testing"))
    assert [v.name for v in training] == [f"{i:02d}" for i in range(1, 17)]
    assert [v.name for v in testing] == [f"{i:02d}" for i in range(1, 13)]
    assert sum(len(v.frame_paths) for v in training) == 2550
    counts = [len(v.frame_paths) for v in testing]
    assert sum(counts) == 2010
    labels = load_labels(ped2_root, testing, counts)
    assert sum(int(y.sum()) for y in labels) == 1648
    assert all(len(y) == n for y, n in zip(labels, counts, strict=True))
    # Frame files are numbered from 000 without gaps.
    for v in training + testing:
        assert [p.stem for p in v.frame_paths] == [f"{t:03d}" for t in range(len(v.frame_paths))]


def test_ped2_decoding(ped2_root: Path) -> None:
    videos = list_videos(ped2_root / "testing")
    shortest = min(videos, key=lambda v: len(v.frame_paths))
    raw = read_image(shortest.frame_paths[0])
    assert raw.shape == (240, 360, 3) and raw.dtype == np.uint8
    assert np.array_equal(raw[:, :, 0], raw[:, :, 2])  # grayscale footage in three equal channels
    lite = DESDnetConfig.lite()
    frames = shortest.read(lite)
    assert frames.shape == (len(shortest.frame_paths), 128, 128, 1)
    assert np.array_equal(frames[0], resize_frame(raw, lite))
    assert 30 < frames.mean() < 220


# ---- bad input: one DatasetError naming the file and the problem ------------------------------


def test_missing_dataset_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="no such dataset folder") as info:
        split_folder(missing, "training")
    assert str(missing) in str(info.value)
    with pytest.raises(DatasetError, match="no such folder") as info:
        list_videos(missing / "training")
    assert str(missing / "training") in str(info.value)


def test_empty_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder") as info:
        split_folder(tmp_path, "training")
    assert str(tmp_path / "training") in str(info.value)
    (tmp_path / "training" / "frames").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no videos found") as info:
        list_videos(tmp_path / "training")
    assert str(tmp_path / "training" / "frames") in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a jpeg at all", b"\xff\xd8\xff\xe0" + bytes(40)])
def test_corrupt_frame(synthetic_root: Path, tmp_path: Path, content: bytes) -> None:
    root = copy_dataset(synthetic_root, tmp_path / "d")
    bad = root / "training" / "frames" / "02" / "017.jpg"
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match="cannot decode this image") as info:
        FrameSet.load(root / "training", TINY)
    assert str(bad) in str(info.value)


def test_video_shorter_than_a_clip(synthetic_root: Path, tmp_path: Path) -> None:
    root = copy_dataset(synthetic_root, tmp_path / "d")
    folder = root / "training" / "frames" / "01"
    for p in sorted(folder.iterdir())[4:]:
        p.unlink()
    with pytest.raises(DatasetError, match="4 frames, fewer than the 5 a clip needs") as info:
        FrameSet.load(root / "training", TINY)
    assert str(folder) in str(info.value)


def test_labels_that_do_not_match_the_frames(synthetic_root: Path, tmp_path: Path) -> None:
    root = copy_dataset(synthetic_root, tmp_path / "d")
    truth = root / "testing" / "ground_truth.json"
    videos = list_videos(root / "testing")
    counts = [len(v.frame_paths) for v in videos]
    table = json.loads(truth.read_text())
    table["videos"]["02"]["frames"] = 35
    truth.write_text(json.dumps(table))
    with pytest.raises(DatasetError, match="'02' has 40 frames but the labels declare 35") as info:
        load_labels(root, videos, counts)
    assert str(truth) in str(info.value)

    table["videos"]["02"] = {"anomalous": [[20, 45]]}  # no frame count, interval past the end
    truth.write_text(json.dumps(table))
    with pytest.raises(DatasetError, match=r"interval \[20, 45\] lies outside its 40 frames"):
        load_labels(root, videos, counts)

    table["videos"]["02"] = {"frames": 40, "anomalous": [20, 39]}  # not a list of pairs
    truth.write_text(json.dumps(table))
    with pytest.raises(DatasetError, match="malformed entry") as info:
        load_labels(root, videos, counts)
    assert str(truth) in str(info.value)

    del table["videos"]["02"]
    truth.write_text(json.dumps(table))
    with pytest.raises(DatasetError, match="no labels for video '02'"):
        load_labels(root, videos, counts)

    truth.write_text("{not json")
    with pytest.raises(DatasetError, match="not a ground-truth file"):
        load_labels(root, videos, counts)
    truth.unlink()
    with pytest.raises(DatasetError, match="missing") as info:
        load_labels(root, videos, counts)
    assert str(truth) in str(info.value)


def test_video_that_cannot_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "broken.avi"
    path.write_bytes(b"RIFF....AVI garbage")
    with pytest.raises(DatasetError) as info:
        Video("broken", video_path=path).read(TINY)
    assert str(path) in str(info.value)


def test_tensor_clips_gather_exactly_what_frameset_clips_build(synthetic_root: Path) -> None:
    """The trainer's on-device gather and the numpy clip builder give bit-identical clips."""
    train_dir = synthetic_root / "training"
    frames = FrameSet.load(train_dir, TINY, list_videos(train_dir))
    index = frames.clip_index(TINY.frames)
    rows = index[np.random.default_rng(0).permutation(len(index))[:12]]
    gathered = TensorClips(frames, TINY.frames).clips(rows)
    assert gathered.dtype == torch.float32
    assert torch.equal(gathered, torch.from_numpy(frames.clips(rows, TINY.frames)))
