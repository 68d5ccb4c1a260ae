"""Event media: a snapshot of the peak frame (the heatmap over it and the event's box, plus a clean copy)
and an MP4 clip (H.264) from the pre-roll to the end, written when an event ends, on a thread of its own.

Files lie under MEDIA/YYYY/MM/DD/<event id>{.jpg,-clean.jpg,.mp4}, written atomically (a temporary
file, then a rename); the event record carries their paths relative to MEDIA. A failure (a full disk,
a clip that cannot be encoded) leaves the event without that file and says why in `media_error`: the
event itself is never lost. The queue of events waiting for their media is bounded (`max_pending`,
policy "write-without-media": beyond it an event goes on at once without media, counted).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from model.files import write_atomically

from .events import ClipFrame, EventMedia
from .eventtypes import EventChange, EventRecord
from .heatmap import heatmap_image

log = logging.getLogger("vad.media")

SNAPSHOT_QUALITY = 90
CLIP_CRF = "23"
BOX_COLOUR = (0, 255, 255)  # yellow in BGR: visible on the jet colour map


def snapshot_images(record: EventRecord, media: EventMedia) -> tuple[bytes, bytes] | None:
    """(overlay JPEG, clean JPEG) of the peak frame at the original frame size, or None without a frame."""
    if media.peak_frame is None:
        return None
    frame = media.peak_frame.decode()
    width, height = media.frame_size
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if frame.shape[:2] != (height, width):
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
    clean = np.ascontiguousarray(frame)
    overlay = clean
    if media.peak_errors is not None:
        reference = media.peak_threshold_score or float(media.peak_errors.max()) or 1.0
        overlay = heatmap_image(media.peak_errors, (width, height), reference, clean, 0.45)
    overlay = overlay.copy()
    if record.box is not None:
        b = record.box
        thickness = max(2, round(max(width, height) / 320))
        cv2.rectangle(overlay, (b.x, b.y), (b.x + b.w - 1, b.y + b.h - 1), BOX_COLOUR, thickness)
    encoded = []
    for image in (overlay, clean):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
        if not ok:  # pragma: no cover - a uint8 BGR image always encodes
            raise RuntimeError("JPEG encoding failed")
        encoded.append(data.tobytes())
    return encoded[0], encoded[1]


def clip_bytes(frames: tuple[ClipFrame, ...] | list[ClipFrame]) -> bytes | None:
    """An H.264 MP4 of the frames (their timestamps set the frame rate), or None for fewer than 2 frames."""
    import io

    import av

    if len(frames) < 2:
        return None
    gaps = [b.timestamp - a.timestamp for a, b in zip(frames, frames[1:], strict=False) if b.timestamp > a.timestamp]
    fps = 1.0 / statistics.median(gaps) if gaps else 25.0
    fps = min(max(fps, 1.0), 60.0)
    width, height = frames[0].size
    width, height = width - width % 2, height - height % 2  # yuv420p needs even sides
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": CLIP_CRF, "preset": "veryfast", "movflags": "+faststart"}
        for frame in frames:
            image = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                continue
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_media(folder: Path, record: EventRecord, media: EventMedia) -> EventRecord:
    """Write an ended event's snapshot and clip; the record with their paths (or the error)."""
    day = time.strftime("%Y/%m/%d", time.gmtime(record.started_at))
    base = Path(day) / record.id
    errors: list[str] = []
    written: dict[str, str] = {}
    size = 0
    try:
        images = snapshot_images(record, media)
        if images is not None:
            for key, suffix, data in (("snapshot_path", ".jpg", images[0]),
                                      ("clean_snapshot_path", "-clean.jpg", images[1])):
                relative = base.with_name(base.name + suffix)
                write_atomically(folder / relative, data)
                written[key], size = str(relative), size + len(data)
        else:
            errors.append("no frame was kept for the snapshot")
    except (OSError, RuntimeError, cv2.error) as exc:
        errors.append(f"snapshot not written: {exc}")
    try:
        data = clip_bytes(media.clip)
        if data is not None:
            relative = base.with_name(base.name + ".mp4")
            write_atomically(folder / relative, data)
            written["clip_path"], size = str(relative), size + len(data)
        else:
            errors.append("fewer than 2 frames were kept for the clip")
    except Exception as exc:  # PyAV raises its own error types; a clip must never cost the event
        errors.append(f"clip not written: {exc}")
    return replace(record, **written, media_bytes=size, media_error="; ".join(errors) or None)


class MediaWriter:
    """One thread writing ended events' media, then handing the completed change to `done`."""

    def __init__(self, folder: Path, done: Callable[[EventChange], None], max_pending: int = 64) -> None:
        self.folder = folder
        self.done = done
        self._queue: queue.Queue[tuple[EventChange, EventMedia] | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="vad-media", daemon=True)
        self.written = 0
        self.failed = 0  # events whose snapshot or clip could not be written
        self.skipped = 0  # events handed on without media because the queue was full

    def start(self) -> None:
        self._thread.start()

    def submit(self, change: EventChange, media: EventMedia) -> None:
        try:
            self._queue.put_nowait((change, media))
        except queue.Full:
            self.skipped += 1
            log.warning("event %s: the media writer is behind; stored without snapshot and clip", change.event.id)
            self.done(replace(change, event=replace(change.event, media_error="media writer queue full")))

    def stop(self, timeout: float = 10.0) -> None:
        """Write what waits (within `timeout`), then stop."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.1, deadline - time.monotonic()))
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            change, media = item
            try:
                record = write_media(self.folder, change.event, media)
            except Exception as exc:  # never lose the event over its media
                log.exception("event %s: media failed", change.event.id)
                record = replace(change.event, media_error=f"media failed: {exc}")
            if record.media_error:
                self.failed += 1
                log.warning("event %s: %s", record.id, record.media_error)
            else:
                self.written += 1
            try:
                self.done(replace(change, event=record))
            except Exception:
                log.exception("event %s could not be handed on after its media", record.id)
