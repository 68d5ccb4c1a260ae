"""Scenes that are not Ped2's, for the checks of per-stream calibration (tests/integration/test_scene_checks.py,
bench/scenes.py). Deterministic, numpy and cv2 only.

- `foreign_ped2(frames, look)`: real Ped2 frames as another camera would see the walkway: mirrored, cropped
  to about 80 %, re-lit (gamma, contrast, brightness) and resized to 384x288. `LOOKS` holds a few such
  cameras.
- `SyntheticScene`: a 384x288 scene of its own: a static textured background (blurred noise, a walkway,
  a few fixed objects), people-sized ellipses walking along the walkway in one direction (the flow) with a
  small jitter, sensor noise, and optional anomalies (`SceneAnomaly`): an object crossing fast, an object
  moving against the flow, a walker against the flow; each with its box per frame (`anomaly_box`) so a
  test can check the reported patch lies on it.

Every frame is BGR uint8 (H, W, 3) with three equal channels (the models are grayscale), as Ped2's files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

#: (width, height) of every scene here: not Ped2's 360x240, and another aspect ratio.
SCENE_SIZE = (384, 288)


# --- Ped2 seen by other cameras ---------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """How another camera sees the Ped2 walkway."""

    name: str
    mirror: bool = True
    crop: float = 0.8  # share of the width and of the height kept
    anchor: tuple[float, float] = (0.5, 0.5)  # where the crop lies: (0, 0) top left .. (1, 1) bottom right
    gamma: float = 1.0  # < 1 brightens the shadows
    contrast: float = 1.0  # gain around mid-grey
    brightness: float = 0.0  # added after the gain
    size: tuple[int, int] = SCENE_SIZE

    def lut(self) -> np.ndarray:
        x = np.arange(256, dtype=np.float64) / 255.0
        y = 255.0 * x**self.gamma
        y = (y - 128.0) * self.contrast + 128.0 + self.brightness
        return np.clip(np.round(y), 0, 255).astype(np.uint8)


#: Three cameras: each mirrored, cropped elsewhere, re-lit otherwise. The first is the default.
LOOKS: tuple[Look, ...] = (
    Look("mirrored-centre-brighter", anchor=(0.5, 0.5), gamma=0.75, contrast=1.15, brightness=8.0),
    Look("mirrored-top-left-darker", anchor=(0.1, 0.2), gamma=1.35, contrast=0.85, brightness=-12.0),
    Look("mirrored-bottom-right-contrast", crop=0.78, anchor=(0.9, 0.8), contrast=1.3, brightness=-5.0),
)


def foreign_ped2(frames: np.ndarray | Sequence[np.ndarray], look: Look = LOOKS[0]) -> np.ndarray:
    """Ped2 frames (N, H, W[, 3]) uint8 -> the same frames through `look`: BGR uint8 (N, 288, 384, 3)."""
    lut = look.lut()
    out = np.empty((len(frames), look.size[1], look.size[0], 3), np.uint8)
    for i, frame in enumerate(frames):
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        h, w = gray.shape
        ch, cw = round(h * look.crop), round(w * look.crop)
        top, left = round(look.anchor[1] * (h - ch)), round(look.anchor[0] * (w - cw))
        part = gray[top : top + ch, left : left + cw]
        if look.mirror:
            part = part[:, ::-1]
        part = cv2.resize(np.ascontiguousarray(part), look.size, interpolation=cv2.INTER_LINEAR)
        out[i] = cv2.cvtColor(cv2.LUT(part, lut), cv2.COLOR_GRAY2BGR)
    return out


def read_ped2(root: Path, split: str, video: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames [start, stop) of a Ped2 video as they are stored: BGR uint8 (N, 240, 360, 3)."""
    paths = sorted((Path(root) / split / "frames" / video).glob("*.jpg"))[start:stop]
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    if not frames or any(f is None for f in frames):
        raise FileNotFoundError(f"{root}/{split}/frames/{video}: no readable frames in [{start}, {stop})")
    return np.stack(frames)


def ped2_labels(root: Path) -> dict[str, np.ndarray]:
    """Per test video, 0/1 frame labels from ground_truth.json (0-based inclusive intervals)."""
    table = json.loads((Path(root) / "testing" / "ground_truth.json").read_text())["videos"]
    labels = {}
    for name, entry in table.items():
        label = np.zeros(int(entry["frames"]), np.int64)
        for first, last in entry["anomalous"]:
            label[first : last + 1] = 1
        labels[name] = label
    return labels


def new_user_clip(root: Path, look: Look = LOOKS[0]) -> np.ndarray:
    """The new user's clip: 200 frames of pedestrians walking in another scene, normal only: training
    videos 04 (180 frames) and the first 20 of 05 as a camera of `look` sees them, one after the other as
    an edited clip would be (pushed in one go, 196 frames are scored)."""
    return foreign_ped2(np.concatenate([read_ped2(root, "training", "04"), read_ped2(root, "training", "05", 0, 20)]),
                        look)


# --- a synthetic scene ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneSpec:
    width: int = SCENE_SIZE[0]
    height: int = SCENE_SIZE[1]
    walkway: tuple[float, float] = (0.38, 0.92)  # the band walkers keep to, as shares of the height
    arrivals: float = 0.025  # new walkers per frame (Poisson): about 7 in view at once
    speed: tuple[float, float] = (1.0, 1.8)  # pixels per frame along the flow (+x)
    body: tuple[int, int] = (7, 16)  # half axes of a walker's body ellipse (x, y); a head above it
    jitter: float = 1.2  # amplitude in pixels of a walker's sway across and along the flow
    noise: float = 2.0  # sensor noise, grey levels (standard deviation)


@dataclass(frozen=True)
class SceneAnomaly:
    """An object that does not belong, from frame `start` until it has left the frame.

    fast: a cart-sized box along the walkway at `speed` pixels per frame with the flow (a cyclist);
    against: the same box against the flow at walking pace (a cart pushed the wrong way);
    walker_against: a walker like the others, walking against the flow (what a reconstruction model
    hardly sees: the same appearance, motion of the same size).
    """

    kind: Literal["fast", "against", "walker_against"]
    start: int
    lane: float = 0.6  # vertical position of its centre, as a share of the height
    speed: float | None = None  # pixels per frame (default per kind)
    shade: float = 225.0

    def velocity(self) -> float:
        default = {"fast": 10.0, "against": 3.0, "walker_against": 1.6}[self.kind]
        speed = default if self.speed is None else self.speed
        return -speed if self.kind != "fast" else speed

    def half_size(self, spec: SceneSpec) -> tuple[int, int]:
        return (spec.body[0], spec.body[1] + 5) if self.kind == "walker_against" else (22, 15)


class SyntheticScene:
    """A deterministic synthetic scene: `frame(t)` is a pure function of (seed, t) for t in [0, frames)."""

    def __init__(self, frames: int, seed: int = 0, spec: SceneSpec = SceneSpec(),
                 anomalies: Sequence[SceneAnomaly] = ()) -> None:
        self.frames, self.seed, self.spec, self.anomalies = frames, seed, spec, tuple(anomalies)
        rng = np.random.default_rng(seed)
        self.background = self._background(rng)
        # Walkers arrive at the left edge (from before frame 0, so the scene starts populated) and cross.
        first = -int((spec.width + 60) / spec.speed[0])
        count = rng.poisson(spec.arrivals * (frames - first)) + 1
        self._t0 = np.sort(rng.uniform(first, frames, count))
        low, high = spec.walkway
        margin = (spec.body[1] + 10) / spec.height
        self._y0 = rng.uniform(low + margin, high - margin / 2, count) * spec.height
        self._speed = rng.uniform(*spec.speed, count)
        self._phase = rng.uniform(0, 2 * np.pi, (count, 2))
        self._period = rng.uniform(25, 60, count)  # frames per sway
        self._scale = rng.uniform(0.85, 1.15, count)  # people differ in size
        dark = rng.random(count) < 0.7
        self._shade = np.where(dark, rng.uniform(25, 80, count), rng.uniform(175, 230, count))

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        s = self.spec
        texture = np.zeros((s.height, s.width), np.float32)
        for cell, weight in ((48, 14.0), (12, 7.0), (3, 3.0)):  # blurred noise at three scales
            noise = rng.normal(0, 1, (s.height // cell + 2, s.width // cell + 2)).astype(np.float32)
            texture += weight * cv2.resize(noise, (s.width, s.height), interpolation=cv2.INTER_CUBIC)
        image = 105.0 + texture + np.linspace(-15, 15, s.width, dtype=np.float32)[None, :]
        top, bottom = (round(f * s.height) for f in s.walkway)
        image[top:bottom] += 25.0  # the walkway, paved lighter
        image[top - 2 : top + 1] = 70.0  # its kerb
        for x0, y0, w, h, shade in ((30, 40, 70, 35, 60.0), (250, 20, 90, 55, 150.0), (170, 70, 28, 28, 80.0)):
            image[y0 : y0 + h, x0 : x0 + w] = shade + 0.5 * texture[y0 : y0 + h, x0 : x0 + w]  # fixed objects
        return cv2.GaussianBlur(image, (3, 3), 0.8)

    # --- geometry -------------------------------------------------------------------------------
    def walkers(self, t: int) -> list[tuple[float, float, float, float]]:
        """(x, y, scale, shade) of each walker in view at frame t."""
        s = self.spec
        age = t - self._t0
        x = -20 + self._speed * age + s.jitter * 0.5 * np.sin(2 * np.pi * age / self._period + self._phase[:, 0])
        y = self._y0 + s.jitter * np.sin(2 * np.pi * age / (1.7 * self._period) + self._phase[:, 1])
        seen = (age >= 0) & (x > -30) & (x < s.width + 30)
        return [(float(a), float(b), float(c), float(d)) for a, b, c, d in
                zip(x[seen], y[seen], self._scale[seen], self._shade[seen], strict=True)]

    def _anomaly_centre(self, anomaly: SceneAnomaly, t: int) -> tuple[float, float] | None:
        if t < anomaly.start:
            return None
        half = anomaly.half_size(self.spec)
        v = anomaly.velocity()
        x0 = -half[0] if v > 0 else self.spec.width + half[0]  # enters from outside the frame
        x = x0 + v * (t - anomaly.start + 1)  # one step in: visible from `start`
        if x + half[0] < 0 or x - half[0] >= self.spec.width:
            return None
        return x, anomaly.lane * self.spec.height

    def anomaly_box(self, t: int) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) in frame pixels of the anomalous object(s) visible at frame t (their union), or None."""
        boxes = []
        for anomaly in self.anomalies:
            centre = self._anomaly_centre(anomaly, t)
            if centre is None:
                continue
            hx, hy = anomaly.half_size(self.spec)
            x0, y0 = max(0, round(centre[0] - hx)), max(0, round(centre[1] - hy))
            x1 = min(self.spec.width, round(centre[0] + hx) + 1)
            y1 = min(self.spec.height, round(centre[1] + hy) + 1)
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1, y1))
        if not boxes:
            return None
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        return x0, y0, x1 - x0, y1 - y0

    def anomaly_mask(self, t: int) -> np.ndarray:
        """uint8 (H, W): 255 on the anomalous object(s) at frame t."""
        mask = np.zeros((self.spec.height, self.spec.width), np.uint8)
        self._draw_anomalies(mask, t, 255.0)
        return mask

    # --- drawing --------------------------------------------------------------------------------
    def _draw_walker(self, image: np.ndarray, x: float, y: float, scale: float, shade: float) -> None:
        bx, by = self.spec.body
        centre = (round(x), round(y))
        cv2.ellipse(image, centre, (round(bx * scale), round(by * scale)), 0, 0, 360, shade, -1, cv2.LINE_AA)
        head = (round(x), round(y - (by + 4) * scale))
        cv2.circle(image, head, round(5 * scale), shade, -1, cv2.LINE_AA)

    def _draw_anomalies(self, image: np.ndarray, t: int, shade: float | None = None) -> None:
        for anomaly in self.anomalies:
            centre = self._anomaly_centre(anomaly, t)
            if centre is None:
                continue
            colour = anomaly.shade if shade is None else shade
            if anomaly.kind == "walker_against":
                self._draw_walker(image, centre[0], centre[1] + 5, 1.0, colour)
            else:
                hx, hy = anomaly.half_size(self.spec)
                cv2.rectangle(image, (round(centre[0] - hx), round(centre[1] - hy)),
                              (round(centre[0] + hx), round(centre[1] + hy)), colour, -1)
                cv2.rectangle(image, (round(centre[0] - hx), round(centre[1] - 3)),  # a stripe: a cart, not a blob
                              (round(centre[0] + hx), round(centre[1] + 3)), colour * 0.4, -1)

    def frame(self, t: int) -> np.ndarray:
        """Frame t: BGR uint8 (H, W, 3)."""
        image = self.background.copy()
        for x, y, scale, shade in self.walkers(t):
            self._draw_walker(image, x, y, scale, shade)
        self._draw_anomalies(image, t)
        noise = np.random.default_rng([self.seed, t]).normal(0, self.spec.noise, image.shape)
        gray = np.clip(image + noise, 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)

    def render(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames [start, stop): BGR uint8 (N, H, W, 3)."""
        stop = self.frames if stop is None else stop
        return np.stack([self.frame(t) for t in range(start, stop)])


def box_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Share of box a's area (x, y, w, h) inside box b."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / max(1, aw * ah)
