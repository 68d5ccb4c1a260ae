"""Synthetic surveillance-like video: textured background, blobs walking as normal motion, and an
anomaly that is an object of another size and speed. Written in the Ped2 frame-folder layout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class SyntheticSpec:
    height: int = 120
    width: int = 180
    walkers: int = 3
    walker_radius: int = 6
    walker_speed: float = 1.5  # pixels per frame
    anomaly_radius: int = 14
    anomaly_speed: float = 6.0


def _background(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0, 1, (spec.height // 6 + 1, spec.width // 6 + 1)).astype(np.float32)
    texture = cv2.resize(noise, (spec.width, spec.height), interpolation=cv2.INTER_CUBIC)
    gradient = np.linspace(90, 150, spec.width, dtype=np.float32)[None, :]
    return np.clip(gradient + 12 * texture, 0, 255)


def make_video(
    frames: int,
    seed: int = 0,
    anomaly: tuple[int, int] | None = None,
    spec: SyntheticSpec = SyntheticSpec(),
) -> tuple[np.ndarray, np.ndarray]:
    """Returns uint8 BGR frames (N, H, W, 3) and uint8 masks (N, H, W) of the anomalous object.

    Walkers move slowly left/right; within `anomaly` = (first, last) frame (inclusive) a large, fast
    object crosses the scene.
    """
    rng = np.random.default_rng(seed)
    background = _background(spec, rng)
    ys = rng.uniform(spec.height * 0.2, spec.height * 0.8, spec.walkers)
    xs = rng.uniform(0, spec.width, spec.walkers)
    direction = rng.choice([-1.0, 1.0], spec.walkers)
    video = np.empty((frames, spec.height, spec.width, 3), np.uint8)
    masks = np.zeros((frames, spec.height, spec.width), np.uint8)
    for t in range(frames):
        image = background.copy()
        for i in range(spec.walkers):
            x = (xs[i] + direction[i] * spec.walker_speed * t) % spec.width
            cv2.circle(image, (int(x), int(ys[i])), spec.walker_radius, 30.0, -1)
        if anomaly is not None and anomaly[0] <= t <= anomaly[1]:
            x = (spec.anomaly_speed * (t - anomaly[0])) % spec.width
            y = spec.height // 2
            cv2.rectangle(image, (int(x) - spec.anomaly_radius, y - spec.anomaly_radius),
                          (int(x) + spec.anomaly_radius, y + spec.anomaly_radius), 235.0, -1)
            cv2.rectangle(masks[t], (int(x) - spec.anomaly_radius, y - spec.anomaly_radius),
                          (int(x) + spec.anomaly_radius, y + spec.anomaly_radius), 255, -1)
        gray = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)
        video[t] = np.repeat(gray[:, :, None], 3, axis=2)
    return video, masks


def write_dataset(
    root: Path,
    train_videos: int = 2,
    test_videos: int = 2,
    frames: int = 40,
    spec: SyntheticSpec = SyntheticSpec(),
) -> Path:
    """ROOT/{training,testing}/frames/NN/NNN.jpg + testing/ground_truth.json + testing/masks."""
    for v in range(train_videos):
        video, _ = make_video(frames, seed=100 + v, spec=spec)
        folder = root / "training" / "frames" / f"{v + 1:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(video):
            cv2.imwrite(str(folder / f"{t:03d}.jpg"), frame)
    table = {}
    for v in range(test_videos):
        first, last = frames // 2, frames - 1
        video, masks = make_video(frames, seed=200 + v, anomaly=(first, last), spec=spec)
        name = f"{v + 1:02d}"
        folder = root / "testing" / "frames" / name
        mask_folder = root / "testing" / "masks" / name
        folder.mkdir(parents=True, exist_ok=True)
        mask_folder.mkdir(parents=True, exist_ok=True)
        for t, (frame, mask) in enumerate(zip(video, masks, strict=True)):
            cv2.imwrite(str(folder / f"{t:03d}.jpg"), frame)
            cv2.imwrite(str(mask_folder / f"{t:03d}.png"), mask)
        table[name] = {"frames": frames, "anomalous": [[first, last]]}
    (root / "testing" / "ground_truth.json").write_text(
        json.dumps({"dataset": "synthetic", "videos": table})
    )
    return root
