"""Prometheus metrics, one CollectorRegistry per app (so two apps in one process never share counters).

Counters move where things happen; gauges that mirror current state (queue depth, streams per state,
WebSocket clients, readiness) are read at scrape time through callbacks, so they cannot drift.
Per-stream label sets are removed when the stream is deleted, to keep cardinality bounded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .domain import DropReason, StreamState
from .eventtypes import EndReason

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
# Why kept /heatmap frames were evicted (service/history.py HeatmapHistory): the stream's budget, or all streams'.
HISTORY_EVICTION_REASONS = ("stream_budget", "total_budget")

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]


# Metrics read from components that count in plain attributes: name -> (help, type, labels).
EXTERNAL: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "vad_event_media_failures": (
        "Ended events whose snapshot or clip could not be written (e.g. a full disk); the event is kept",
        "counter", ()),
    "vad_event_store_queue": ("Event changes waiting for the database", "gauge", ()),
    "vad_event_store_dropped": ("Event changes dropped because the write queue was full (oldest first)",
                                "counter", ()),
    "vad_event_store_up": ("1 while the event database answers", "gauge", ()),
    "vad_outbox_depth": ("Notifications not delivered yet", "gauge", ()),
    "vad_notifications": ("Notification delivery attempts by receiver kind (webhook, mqtt) and outcome "
                          "(delivered, failed, given_up)", "counter", ("kind", "outcome")),
    "vad_event_frame_memory_dropped": (
        "Frames dropped from the per-stream frame memory for clips (byte budget, oldest first), and frames an "
        "event's clip could not keep", "counter", ("where",)),
    "vad_event_storage": ("Stored events and the bytes of their media (read at most every 30 s)", "gauge",
                          ("what",)),
    "vad_data_dir_free_bytes": ("Free bytes on the file system of the service's data folder", "gauge", ()),
    "vad_data_dir_size_bytes": ("Size of the file system of the service's data folder", "gauge", ()),
    "vad_inference_busy_ratio": ("Share of recent wall time (3 s time constant) a model's inference worker spent "
                                 "on batches; near 1 the model is the bottleneck", "gauge", ("model",)),
}


class _LiveGauges(Collector):
    """Gauges computed at scrape time from callbacks set by the lifespan."""

    def __init__(self) -> None:
        self.queue_depth: Callable[[], int] = lambda: 0
        self.stream_states: Callable[[], Mapping[str, int]] = lambda: {}
        self.websocket_clients: Callable[[], int] = lambda: 0
        self.ingest_connections: Callable[[], int] = lambda: 0
        self.ready: Callable[[], bool] = lambda: False
        self.heatmap_history_bytes: Callable[[], int] = lambda: 0
        # stream id -> (out-of-domain warning on, calibration learning progress 0..1 or 1 when not learning)
        self.stream_scoring: Callable[[], Mapping[str, tuple[bool, float]]] = lambda: {}
        self.model_states: Callable[[], Mapping[str, str]] = lambda: {}  # model name -> status
        self.open_events: Callable[[], int] = lambda: 0
        self.event_frame_memory_bytes: Callable[[], int] = lambda: 0
        self.latest_scores: Callable[[], Mapping[str, float]] = lambda: {}  # stream id -> last smoothed z
        # Values counted by components that import no prometheus_client (store, notifiers, media writer):
        # name -> (help, type "counter"|"gauge", label names, callable returning {label values: value}).
        # Every name is declared here (no samples until the lifespan sets its reader with `read`).
        self.external: dict[str, tuple[str, str, tuple[str, ...], Callable[[], Mapping[tuple[str, ...], float]]]] = {
            name: (help_text, kind, labels, dict) for name, (help_text, kind, labels) in EXTERNAL.items()
        }

    def read(self, name: str, reader: Callable[[], Mapping[tuple[str, ...], float]]) -> None:
        help_text, kind, labels, _ = self.external[name]
        self.external[name] = (help_text, kind, labels, reader)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "vad_queue_depth_frames", "Frames waiting for the inference worker", value=self.queue_depth()
        )
        states = GaugeMetricFamily("vad_streams", "Open streams by state", labels=["state"])
        counts = self.stream_states()
        for state in StreamState:
            states.add_metric([state.value], counts.get(state, 0))
        yield states
        yield GaugeMetricFamily(
            "vad_websocket_clients", "Connected WebSocket score subscribers", value=self.websocket_clients()
        )
        yield GaugeMetricFamily(
            "vad_ingest_connections", "Open /ingest WebSockets pushing frames", value=self.ingest_connections()
        )
        yield GaugeMetricFamily(
            "vad_ready", "1 when the weights are loaded and the inference worker runs", value=float(self.ready())
        )
        scoring = self.stream_scoring()
        domain = GaugeMetricFamily(
            "vad_stream_out_of_domain", "1 while a stream's scene sits far from its model's (see its warnings)",
            labels=["stream"],
        )
        learning = GaugeMetricFamily(
            "vad_stream_calibration_progress", "Share of its calibration frames a learning stream has seen (1: not "
            "learning)", labels=["stream"],
        )
        for stream, (out_of_domain, progress) in sorted(scoring.items()):
            domain.add_metric([stream], float(out_of_domain))
            learning.add_metric([stream], progress)
        yield domain
        yield learning
        models = GaugeMetricFamily("vad_models", "Models of the models folder by status", labels=["status"])
        statuses = list(self.model_states().values())
        for status in ("available", "loaded", "error", "removed"):
            models.add_metric([status], statuses.count(status))
        yield models
        yield GaugeMetricFamily("vad_events_open", "Events open now (all streams)", value=self.open_events())
        yield GaugeMetricFamily(
            "vad_event_frame_memory_bytes", "Bytes of recent frames kept for event clips, all streams",
            value=self.event_frame_memory_bytes(),
        )
        latest = GaugeMetricFamily("vad_stream_smoothed_score", "Latest smoothed z-score of a stream",
                                   labels=["stream"])
        for stream, value in sorted(self.latest_scores().items()):
            latest.add_metric([stream], value)
        yield latest
        for name, (help_text, kind, labels, read) in self.external.items():
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_text, labels=labels)
            for label_values, value in sorted(read().items()):
                family.add_metric(list(label_values), value)
            yield family
        yield GaugeMetricFamily(
            "vad_heatmap_history_bytes", "Bytes of scored frames kept for /heatmap, all streams",
            value=self.heatmap_history_bytes(),
        )


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_received = Counter(
            "vad_frames_received", "Frames accepted into a stream", ["stream"], registry=r
        )
        self.frames_warming = Counter(
            "vad_frames_warming", "Frames answered as warming (ring buffer not yet full)", ["stream"], registry=r
        )
        self.frames_scored = Counter("vad_frames_scored", "Frames scored by the model", ["stream"], registry=r)
        self.frames_dropped = Counter(
            "vad_frames_dropped", "Accepted frames not scored, by reason", ["stream", "reason"], registry=r
        )
        self.frames_rejected = Counter(
            "vad_frames_rejected", "Uploads refused before acceptance (bad input), by reason", ["reason"], registry=r
        )
        self.stateless_requests = Counter(
            "vad_stateless_requests", "POST /v1/score requests by outcome", ["outcome"], registry=r
        )
        self.anomalies = Counter(
            "vad_anomalous_frames", "Scored frames whose smoothed score reached the threshold", ["stream"], registry=r
        )
        self.inference_latency = Histogram(
            "vad_inference_latency_seconds", "Model forward + scoring time per batch",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.frame_latency = Histogram(
            "vad_frame_latency_seconds", "Receipt to score per scored frame (decode, queue, inference)",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "vad_inference_batch_frames", "Clips per inference batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_errors = Counter("vad_inference_errors", "Batches whose inference raised", registry=r)
        self.websocket_sent = Counter("vad_websocket_messages_sent", "Score messages sent to WebSocket clients",
                                      registry=r)
        self.websocket_dropped = Counter(
            "vad_websocket_messages_dropped", "Score messages dropped from a slow client's full queue (oldest first)",
            registry=r,
        )
        self.websocket_disconnects = Counter(
            "vad_websocket_disconnects", "WebSocket clients gone, by reason", ["reason"], registry=r
        )
        self.client_disconnects = Counter(
            "vad_http_client_disconnects", "HTTP requests whose client went away before the answer (mid-upload)",
            registry=r,
        )
        self.source_reconnects = Counter(
            "vad_source_reconnects", "Live source reopen attempts after a failed open, a drop or a stall",
            ["stream"], registry=r,
        )
        self.source_stalls = Counter(
            "vad_source_stalls", "Live sources that sent no frame for stall_timeout while connected",
            ["stream"], registry=r,
        )
        self.heatmap_history_evicted = Counter(
            "vad_heatmap_history_evicted", "Kept /heatmap frames evicted by a byte budget, by budget",
            ["reason"], registry=r,
        )
        for reason in HISTORY_EVICTION_REASONS:
            self.heatmap_history_evicted.labels(reason)  # both series from the start, at 0
        self.model = Info("vad_model", "Loaded model: weights file, configuration, backend, autotune state",
                          registry=r)
        self.backend_switches = Counter(
            "vad_backend_switches", "Backend changes while serving (backend auto: the background autotune found a "
            "faster backend that passed parity)", registry=r,
        )
        self.events_opened = Counter("vad_events_opened", "Anomaly events opened", ["stream"], registry=r)
        self.events_closed = Counter(
            "vad_events_closed", "Anomaly events closed, by end reason", ["stream", "reason"], registry=r
        )
        self.event_duration = Histogram(
            "vad_event_duration_seconds", "Duration of closed events", registry=r,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.live = _LiveGauges()
        r.register(self.live)
        ProcessCollector(registry=r)
        self._stream_reasons: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    # The three calls below make a ServiceMetrics the `SourceMetrics` of live sources (service/sources.py).
    def reconnect(self, stream: str) -> None:
        self.source_reconnects.labels(stream).inc()

    def stall(self, stream: str) -> None:
        self.source_stalls.labels(stream).inc()

    def dropped(self, stream: str, reason: DropReason, count: int = 1) -> None:
        """Count frames of `stream` not scored, in the manager or before it in a live source."""
        with self._lock:
            self._stream_reasons.setdefault(stream, set()).add(reason)
        self.frames_dropped.labels(stream, reason).inc(count)

    def forget_stream(self, stream: str) -> None:
        """Remove a deleted stream's label sets."""
        for counter in (self.frames_received, self.frames_warming, self.frames_scored, self.anomalies,
                        self.source_reconnects, self.source_stalls, self.events_opened):
            with contextlib.suppress(KeyError):
                counter.remove(stream)
        with self._lock:
            reasons = self._stream_reasons.pop(stream, set())
        for reason in reasons:
            with contextlib.suppress(KeyError):
                self.frames_dropped.remove(stream, reason)
        for end_reason in EndReason:
            with contextlib.suppress(KeyError):
                self.events_closed.remove(stream, end_reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)
