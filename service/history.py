"""The scored frames kept for GET /v1/streams/{id}/heatmap, of every stream, under count and byte
budgets with a named drop policy ("drop-oldest") and an eviction counter."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .domain import FrameResult
from .heatmap import KeptFrame


@dataclass(frozen=True)
class HeatmapRecord:
    """A scored frame kept for GET /heatmap."""

    result: FrameResult  # frame_width/height: the original size, at which the heatmap is rendered
    errors: np.ndarray  # float32 (S, S) E² in model pixels
    frame: KeptFrame  # the frame for overlays: raw when small, else downscaled JPEG (service/heatmap.py)

    @property
    def nbytes(self) -> int:
        return int(self.errors.nbytes) + self.frame.nbytes


#: The drop policy of `HeatmapHistory`.
HISTORY_POLICY = "drop-oldest"


class HeatmapHistory:
    """The scored frames kept for GET /heatmap, of all streams, under three bounds (policy "drop-oldest"):

    - at most `max_records` per stream: a stream's oldest record goes first (the rolling window of
      `heatmap_history` frames; not counted as an eviction);
    - at most `bytes_per_stream` bytes per stream: the stream's oldest records are evicted
      (reason "stream_budget");
    - at most `bytes_total` bytes for all streams: the oldest records of any stream are evicted
      (reason "total_budget").

    The record just added is never evicted by a budget, even when it alone is above one: a stream's
    own frames never evict its latest (a newer frame of another stream may, under the total budget). A record's bytes are its error map's and its
    kept frame's (`HeatmapRecord.nbytes`). Thread-safe; its lock is a leaf (callers may hold a stream's
    lock), and `evicted(reason, count)` is called under it, so it must not call back.
    """

    policy = HISTORY_POLICY

    def __init__(
        self,
        max_records: int,
        bytes_per_stream: int,
        bytes_total: int,
        evicted: Callable[[str, int], None] = lambda reason, count: None,
    ) -> None:
        self.max_records = max_records
        self.bytes_per_stream = bytes_per_stream
        self.bytes_total = bytes_total
        self._evicted = evicted
        self._lock = threading.Lock()
        self._order: OrderedDict[int, tuple[str, HeatmapRecord]] = OrderedDict()  # oldest first, all streams
        self._streams: dict[str, deque[int]] = {}  # stream -> its records' keys in _order, oldest first
        self._stream_bytes: dict[str, int] = {}
        self._bytes = 0
        self._next = 0

    def add(self, stream_id: str, record: HeatmapRecord) -> None:
        with self._lock:
            key = self._next
            self._next += 1
            self._order[key] = (stream_id, record)
            keys = self._streams.setdefault(stream_id, deque())
            keys.append(key)
            self._stream_bytes[stream_id] = self._stream_bytes.get(stream_id, 0) + record.nbytes
            self._bytes += record.nbytes
            while len(keys) > self.max_records:
                self._evict(keys[0])
            dropped = 0
            while self._stream_bytes[stream_id] > self.bytes_per_stream and keys[0] != key:
                self._evict(keys[0])
                dropped += 1
            if dropped:
                self._evicted("stream_budget", dropped)
            dropped = 0
            while self._bytes > self.bytes_total:
                oldest = next(iter(self._order))
                if oldest == key:
                    break
                self._evict(oldest)
                dropped += 1
            if dropped:
                self._evicted("total_budget", dropped)

    def records(self, stream_id: str) -> list[HeatmapRecord]:
        """The stream's kept records, oldest first."""
        with self._lock:
            return [self._order[key][1] for key in self._streams.get(stream_id, ())]

    def forget(self, stream_id: str) -> None:
        """Drop a stream's records (it was deleted); not counted as evictions."""
        with self._lock:
            for key in self._streams.pop(stream_id, ()):
                _, record = self._order.pop(key)
                self._bytes -= record.nbytes
            self._stream_bytes.pop(stream_id, None)

    def bytes_kept(self, stream_id: str | None = None) -> int:
        """Bytes kept for one stream, or for all (the gauge vad_heatmap_history_bytes)."""
        with self._lock:
            return self._bytes if stream_id is None else self._stream_bytes.get(stream_id, 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)

    def _evict(self, key: int) -> None:
        stream_id, record = self._order.pop(key)
        keys = self._streams[stream_id]
        assert keys[0] == key  # a stream's records are in the global order too: its oldest goes first
        keys.popleft()
        self._stream_bytes[stream_id] -= record.nbytes
        self._bytes -= record.nbytes
        if not keys:
            del self._streams[stream_id]
            del self._stream_bytes[stream_id]
