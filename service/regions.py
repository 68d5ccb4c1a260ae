"""Ignore regions: polygons in frame pixels (a road with traffic, a clock, a tree in the wind) whose pixels
are left out of the error map before the patch maximum and the heatmap.

A polygon is a list of at least 3 [x, y] points in the pixels of the stream's frames (x to the right,
y down, from the top-left corner). The error map is in model pixels (S x S, the frame resized without
keeping its aspect), so the polygons are filled at the frame's size and the result resized to S x S:
each model pixel keeps the share of its area that no polygon covers (`keep_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .domain import InvalidRegion

Point = tuple[float, float]

MAX_REGIONS = 32
MAX_POINTS = 256
#: Frames are rasterised at most this many pixels on their long side (a 4K frame's mask needs no more).
RASTER_MAX_SIDE = 1024


@dataclass(frozen=True)
class IgnoreRegions:
    polygons: tuple[tuple[Point, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def as_lists(self) -> list[list[list[float]]]:
        return [[[x, y] for x, y in polygon] for polygon in self.polygons]

    def outside(self, frame_size: tuple[int, int]) -> list[int]:
        """Indices of the polygons with a point outside a frame of this (width, height)."""
        width, height = frame_size
        return [i for i, polygon in enumerate(self.polygons)
                if any(not (0 <= x <= width and 0 <= y <= height) for x, y in polygon)]


def parse_regions(polygons: Sequence[Sequence[Sequence[float]]], frame_size: tuple[int, int] | None) -> IgnoreRegions:
    """Check polygons from a request; `frame_size` (width, height), when the stream has seen a frame,
    also refuses points outside it. Raises InvalidRegion naming the polygon and the problem."""
    if len(polygons) > MAX_REGIONS:
        raise InvalidRegion(f"ignore_regions: at most {MAX_REGIONS} polygons, got {len(polygons)}")
    parsed: list[tuple[Point, ...]] = []
    for i, polygon in enumerate(polygons):
        where = f"ignore_regions[{i}]"
        if len(polygon) < 3:
            raise InvalidRegion(f"{where}: a polygon needs at least 3 points, got {len(polygon)}")
        if len(polygon) > MAX_POINTS:
            raise InvalidRegion(f"{where}: at most {MAX_POINTS} points, got {len(polygon)}")
        points: list[Point] = []
        for j, point in enumerate(polygon):
            if len(point) != 2:
                raise InvalidRegion(f"{where}[{j}]: a point is [x, y], got {len(point)} numbers")
            x, y = float(point[0]), float(point[1])
            if x < 0 or y < 0:
                raise InvalidRegion(f"{where}[{j}]: ({x:g}, {y:g}) lies outside the frame (negative)")
            if frame_size is not None and (x > frame_size[0] or y > frame_size[1]):
                raise InvalidRegion(f"{where}[{j}]: ({x:g}, {y:g}) lies outside the stream's "
                                    f"{frame_size[0]}x{frame_size[1]} frames")
            points.append((x, y))
        if _area(points) <= 0:
            raise InvalidRegion(f"{where}: the polygon has no area (its points lie on one line)")
        parsed.append(tuple(points))
    return IgnoreRegions(tuple(parsed))


def _area(points: list[Point]) -> float:
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def keep_mask(regions: IgnoreRegions, frame_size: tuple[int, int], model_size: int) -> np.ndarray:
    """float32 (S, S): the share of each model pixel that no polygon covers (1 = kept, 0 = ignored)."""
    width, height = frame_size
    scale = min(1.0, RASTER_MAX_SIDE / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    covered = np.zeros((h, w), np.uint8)
    # fillPoly takes fixed-point coordinates: 4 fractional bits keep sub-pixel corners.
    shift = 4
    polys = [np.round(np.array(p, np.float64) * scale * (1 << shift)).astype(np.int32) for p in regions.polygons]
    cv2.fillPoly(covered, polys, 255, lineType=cv2.LINE_8, shift=shift)
    share = cv2.resize(covered.astype(np.float32) / 255.0, (model_size, model_size), interpolation=cv2.INTER_AREA)
    return np.clip(1.0 - share, 0.0, 1.0).astype(np.float32)
