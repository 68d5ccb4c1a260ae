"""The running service: model, queue, worker thread, stream manager and WebSocket hub, built and
stopped by the FastAPI lifespan (service/app.py). Nothing here is created at import time.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable

import torch
from starlette.concurrency import run_in_threadpool

from model.weights import WeightsError

from . import autotune
from .autotune import AutoTuner
from .calibration import CalibrationPolicy, CalibrationStore
from .domain import DropReason, FrameResult
from .events import EventEngine, EventMedia, EventParams
from .eventtypes import ChangeKind, EventChange
from .infer import FrameQueue, InferenceWorker
from .media import MediaWriter
from .metrics import ServiceMetrics
from .models import ModelRegistry, ModelSlot
from .notify.payload import MQTT_RECEIVER, payload_json, receivers, webhook_urls
from .publish import ScoreHub
from .runtime import ModelRuntime, load_runtime
from .score import Scorer
from .settings import Settings
from .streams import SourceFactory, StreamManager

log = logging.getLogger("vad.service")


class ServiceContext:
    # Backend "auto" without a measured record: the background measurement (service/autotune.py).
    autotuner: AutoTuner | None = None
    autotune_state: str = autotune.OFF

    def __init__(
        self,
        settings: Settings,
        serialize: Callable[[FrameResult], str],
        source_factory: SourceFactory | None = None,
        serialize_event: Callable[[EventChange], str] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        publish = settings.publish
        self.hub = ScoreHub(publish.websocket_queue_size, publish.websocket_stuck_seconds, serialize, self.metrics)
        # WS /v1/events: event changes (start, update, end) as they happen.
        self.event_hub = ScoreHub(publish.websocket_queue_size, publish.websocket_stuck_seconds,
                                  serialize_event or (lambda change: change.event.id), self.metrics,
                                  stream_of=lambda change: change.event.stream_id)
        e = settings.events
        self.event_defaults = EventParams(
            min_frames=e.event_min_frames, hysteresis=e.event_hysteresis, release_frames=e.event_release_frames,
            cooldown_seconds=e.event_cooldown_seconds, max_seconds=e.event_max_seconds,
            pre_roll_seconds=e.event_pre_roll_seconds, clip_max_seconds=e.event_clip_max_seconds,
        )
        self.events = EventEngine(self.event_defaults, e.event_frame_memory_bytes, self._event_changed)
        self.media_dir = settings.scenes.data_dir / "media"
        self.media = MediaWriter(self.media_dir, self._dispatch_event)
        self.store = None  # the event store (service/store), opened in start()
        self.store_error: str | None = None
        self.retention = None  # service.store.RetentionWorker
        self.receivers: list[str] = []  # outbox receiver ids of every event change
        self.notifiers: list = []  # WebhookNotifier, MqttNotifier
        self.source_factory = source_factory
        self.runtime: ModelRuntime | None = None  # the default model's
        self.default: ModelSlot | None = None  # the default model's pipeline
        self.models: ModelRegistry
        self.load_error: str | None = None
        self.stopping = False
        self.shutdown_requested = asyncio.Event()  # ends the readers of /ingest connections
        self.ingest_sessions = 0  # open /ingest connections
        self.manager: StreamManager  # built in start(), once the model's configuration is known

    @property
    def scorer(self) -> Scorer | None:
        return self.default.scorer if self.default is not None else None

    @property
    def worker(self) -> InferenceWorker | None:
        return self.default.worker if self.default is not None else None

    def queue_depth(self) -> int:
        return sum(len(slot.queue) for slot in self.models.slots())

    def _load_model(self, path) -> ModelRuntime:  # noqa: ANN001 - a Path
        """Another model of the folder, with the service's backend settings (no autotune: that runs for the
        default model; a backend record measured for these weights is used)."""
        return load_runtime(self.settings.model.model_copy(update={"weights": path, "threshold": None}))

    def _build_slot(self, name: str, path, runtime: ModelRuntime, digest: str) -> ModelSlot:  # noqa: ANN001
        inference, scenes = self.settings.inference, self.settings.scenes
        policy = CalibrationPolicy(
            frames=scenes.calibration_frames, check_frames=scenes.calibration_check_frames,
            out_of_domain_z=scenes.out_of_domain_z, domain_window=scenes.out_of_domain_window,
        )
        slot = ModelSlot(
            name=name, path=path, runtime=runtime,
            queue=FrameQueue(inference.max_pending_per_stream, inference.max_pending_stateless),
            scorer=Scorer(runtime.config, runtime.calibration, runtime.threshold, policy=policy), weights_sha256=digest,
        )
        threads = self.settings.model.torch_threads or torch.get_num_threads()
        slot.worker = InferenceWorker(
            runtime, slot.queue, lambda jobs, scores, error: self.manager.complete_batch(slot, jobs, scores, error),
            self.metrics, max_batch=inference.max_batch, batch_wait_ms=inference.batch_wait_ms,
            extra_latency_ms=inference.extra_inference_latency_ms, threads=threads,
        )
        if not self.stopping:
            slot.worker.start()
        return slot

    def _swap_model(self, slot: ModelSlot, runtime: ModelRuntime, digest: str) -> None:
        """A changed weights file of a loaded model (reload): swapped in between two batches."""
        assert slot.worker is not None

        def at_switch(new: ModelRuntime) -> None:
            self._take_runtime(slot, new)
            slot.scorer.relearn_learned("the model's weights changed")
            slot.weights_sha256 = digest

        slot.worker.switch_runtime(runtime, at_switch)
        self._publish_model_info()

    def _take_runtime(self, slot: ModelSlot, new: ModelRuntime) -> None:
        """A slot's new runtime (another backend, or reloaded weights): run by its worker between two batches,
        so the score stage normalises with the new calibration from the batch the new runtime scores."""
        slot.scorer.set_model_calibration(new.calibration, new.threshold)
        slot.runtime = new
        if slot is self.default:
            self.runtime = new

    def _make_manager(self) -> StreamManager:
        scenes = self.settings.scenes
        return StreamManager(
            acquire=self.models.acquire,
            default_slot=lambda: self.default,
            calibration_store=CalibrationStore(scenes.data_dir / "calibrations"),
            default_calibration=scenes.calibration,
            metrics=self.metrics,
            publish=self.hub.publish,
            on_stream_deleted=self._stream_deleted,
            max_streams=self.settings.limits.max_streams,
            heatmap_history=self.settings.limits.heatmap_history,
            heatmap_history_bytes_per_stream=self.settings.limits.heatmap_history_bytes_per_stream,
            heatmap_history_bytes_total=self.settings.limits.heatmap_history_bytes_total,
            heatmap_frame_max_side=self.settings.limits.heatmap_frame_max_side,
            max_gap_seconds=self.settings.streams.max_gap_seconds,
            source_factory=self.source_factory,
            readiness=self.not_ready_reason,
            events=self.events,
        )

    def not_ready_reason(self) -> str | None:
        if self.stopping:
            return "shutting down"
        if self.load_error is not None:
            return self.load_error
        if self.default is None or self.worker is None:
            return "model not loaded yet"
        if not self.worker.alive:
            return self.worker.failure or "inference worker is not running"
        return None

    async def start(self) -> None:
        s = self.settings.model
        self.hub.bind(asyncio.get_running_loop())
        self.event_hub.bind(asyncio.get_running_loop())
        self.media.start()
        await run_in_threadpool(self._open_store)
        await run_in_threadpool(self._start_notifiers)
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        try:
            # Loading and the warm-up batch block: keep them off the event loop.
            self.runtime = await run_in_threadpool(load_runtime, s)
        except (WeightsError, ValueError, RuntimeError, OSError, ImportError) as exc:
            self.load_error = f"cannot load the model: {exc}"
            log.error("%s; the server runs but /readyz answers 503 until it is restarted with usable weights",
                      self.load_error)
        rt = self.runtime
        self.models = ModelRegistry(self.settings.scenes.models_dir, s.weights, self._load_model, self._build_slot,
                                    self._swap_model)
        self.manager = self._make_manager()
        if rt is not None:
            self.default = self.models.adopt(rt)
        else:
            self.models.mark_error(self.models.default_name, self.load_error or "not loaded")
        self.metrics.live.queue_depth = self.queue_depth
        self.metrics.live.websocket_clients = lambda: self.hub.client_count
        self.metrics.live.ingest_connections = lambda: self.ingest_sessions
        self.metrics.live.ready = lambda: self.not_ready_reason() is None
        self.metrics.live.stream_states = self.manager.state_counts
        self.metrics.live.stream_scoring = self.manager.scoring_gauges
        self.metrics.live.model_states = lambda: {m.name: m.status for m in self.models.infos()}
        self.metrics.live.open_events = self.events.open_count
        self.metrics.live.event_frame_memory_bytes = self.events.frame_memory_bytes_used
        self.metrics.live.latest_scores = self.manager.latest_scores
        live = self.metrics.live
        live.read("vad_event_media_failures", lambda: {(): self.media.failed + self.media.skipped})
        live.read("vad_event_frame_memory_dropped", lambda: {
            ("memory",): float(self.events.frames_dropped_from_memory()),
            ("clip",): float(self.events.clip_frames_dropped)})
        live.read("vad_data_dir_free_bytes", lambda: {(): self._disk()[0]})
        live.read("vad_data_dir_size_bytes", lambda: {(): self._disk()[1]})
        live.read("vad_inference_busy_ratio", lambda: {
            (slot.name,): slot.worker.busy.share() for slot in self.models.slots() if slot.worker is not None})
        if rt is None:
            self.metrics.model.info({"weights": s.weights.name, "loaded": "false"})
            return
        threads = s.torch_threads or torch.get_num_threads()
        log.info("model %s loaded on %s (%s/%s), threshold %.3f", s.weights, rt.device, rt.backend_name, rt.precision,
                 rt.threshold)
        if rt.auto is not None and rt.auto.measured:
            self.autotune_state = autotune.RECORD
        elif rt.unmeasured and s.autotune and rt.device == "cpu":
            if autotune.cache_is_writable(s.cache_dir):
                self._start_autotune(rt, threads)
            else:
                log.warning("backend auto: the cache folder %s is not writable, so the backends are not measured "
                            "(serving with torch fp32); set VAD_CACHE_DIR to a writable folder", s.cache_dir)
        self._publish_model_info()

    async def begin_shutdown(self, timeout: float = 2.0) -> None:
        """First step of a graceful shutdown, run by the server before it drops its connections (which
        would close WebSockets with 1012): refuse new work, close subscribers with 1001 (going away), and
        let /ingest connections answer the frames they accepted before they close with 1001."""
        self.stopping = True
        self.shutdown_requested.set()
        await self.hub.close_all_and_wait(timeout)
        deadline = asyncio.get_running_loop().time() + timeout
        while self.ingest_sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.stopping = True
        if self.autotuner is not None:  # first: it switches nothing once stopping, and holds no frame
            await run_in_threadpool(self.autotuner.stop)
        self.hub.close_all()
        self.event_hub.close_all()
        await run_in_threadpool(self.manager.close)  # live sources' stop() may block briefly; open events end
        for slot in self.models.slots():
            self.manager.drop_jobs(slot.queue.close(), DropReason.SHUTDOWN)
        for slot in self.models.slots():
            if slot.worker is not None:
                await run_in_threadpool(slot.worker.stop)
        self.events.close_all()  # frames scored after the streams closed opened nothing; to be sure
        await run_in_threadpool(self.media.stop)  # the media of events that ended at shutdown
        for notifier in self.notifiers:
            await run_in_threadpool(notifier.stop)
        if self.store is not None:
            if self.retention is not None:
                await run_in_threadpool(self.retention.stop)
            await run_in_threadpool(self.store.close)

    def _publish_model_info(self) -> None:
        """vad_model_info: the weights, and the backend running now (it changes when the autotune switches)."""
        rt = self.runtime
        if rt is None:
            return
        self.metrics.model.info({
            "weights": self.settings.model.weights.name, "loaded": "true", "config": rt.config.to_json(),
            "backend": rt.backend_name, "precision": rt.precision, "device": rt.device,
            "threshold": f"{rt.threshold:g}",
            "calibration": "weights" if rt.calibration_source == "weights" else "backend record",
            "autotune": self.autotune_state,
        })

    def _start_autotune(self, rt: ModelRuntime, threads: int) -> None:
        assert self.worker is not None
        self.autotuner = AutoTuner(rt, self.settings.model, threads, self._switch_runtime, self._autotune_progress)
        self.autotune_state = autotune.COLLECTING
        self.worker.clip_tap = self.autotuner.offer
        self.autotuner.start()

    def _autotune_progress(self, state: str) -> None:
        self.autotune_state = state
        self._publish_model_info()

    def _switch_runtime(self, runtime: ModelRuntime) -> bool:
        """The autotune's choice (its thread): the inference worker takes it between two batches, and the
        score stage normalises with its calibration from that same batch on. False when stopping."""
        slot = self.default
        if self.stopping or slot is None or slot.worker is None or not slot.worker.alive:
            return False
        slot.worker.switch_runtime(runtime, lambda new: self._take_runtime(slot, new))
        self.metrics.backend_switches.inc()
        self._publish_model_info()
        return True

    def _stream_deleted(self, stream_id: str) -> None:
        self.hub.close_stream(stream_id)
        self.metrics.forget_stream(stream_id)

    # --- events ---------------------------------------------------------------------------------------
    def _disk(self) -> tuple[float, float]:
        """(free, size) bytes of the data folder's file system (0, 0 when it cannot be read)."""
        try:
            usage = shutil.disk_usage(self.settings.scenes.data_dir)
        except OSError:
            return 0.0, 0.0
        return float(usage.free), float(usage.total)

    def event_store_status(self) -> str:
        if self.store is None:
            return f"not open: {self.store_error or 'starting'}"
        if not self.store.database_up:
            return f"database unreachable; {self.store.queued()} event changes wait in memory"
        return "ok"

    def _open_store(self) -> None:
        """The event database (migrations applied) and its retention worker. A database that cannot be
        opened leaves the service scoring, without events storage: /readyz and GET /v1/events say why."""
        from .store import EventStore, RetentionWorker, StoreError

        e = self.settings.events
        try:
            # A PostgreSQL server may start after the service (compose): wait a little for it.
            self.store = EventStore.open(e.database_url, self.settings.scenes.data_dir,
                                         write_queue=e.event_write_queue,
                                         connect_wait_s=15.0 if e.database_url is not None else 0.0)
        except StoreError as exc:
            self.store_error = str(exc)
            log.error("events are not stored: %s", exc)
            return
        self.retention = RetentionWorker(self.store, max_age_s=e.event_retention_days * 86400,
                                         max_bytes=e.event_retention_bytes)
        self.retention.start()
        store, live = self.store, self.metrics.live
        live.read("vad_event_store_queue", lambda: {(): store.queued()})
        live.read("vad_event_store_dropped", lambda: {(): store.dropped})
        live.read("vad_event_store_up", lambda: {(): float(store.database_up)})
        live.read("vad_outbox_depth", lambda: {(): store.depth()})
        cache: dict[str, tuple[float, dict[tuple[str, ...], float]]] = {}

        def storage() -> dict[tuple[str, ...], float]:
            # An aggregate over the events table: at most every 30 s, not at every scrape.
            now = time.monotonic()
            if "value" not in cache or now - cache["value"][0] > 30:
                try:
                    stats = store.stats()
                    cache["value"] = (now, {("events",): float(stats["events"]),
                                            ("media_bytes",): float(stats["media_bytes"])})
                except Exception:  # the database away: no sample rather than a failed scrape
                    return cache.get("value", (0.0, {}))[1]
            return cache["value"][1]

        live.read("vad_event_storage", storage)

    def _event_changed(self, change: EventChange, media: EventMedia | None) -> None:
        """From the events stage (inference worker): an ended event first gets its media written."""
        event = change.event
        if change.kind == ChangeKind.START:
            self.metrics.events_opened.labels(event.stream_id).inc()
        elif change.kind == ChangeKind.END:
            self.metrics.events_closed.labels(event.stream_id, event.end_reason or "").inc()
            if event.duration_s is not None:
                self.metrics.event_duration.observe(event.duration_s)
        if change.kind == ChangeKind.END and media is not None:
            self.media.submit(change, media)
        else:
            self._dispatch_event(change)

    def _dispatch_event(self, change: EventChange) -> None:
        """Store (with its notifications) and publish an event change. Any thread; never blocks."""
        if self.store is not None:
            self.store.submit(change, self.notifications(change))
        self.event_hub.publish(change)

    def notifications(self, change: EventChange) -> list[tuple[str, str]]:
        """(receiver, payload) pairs for the outbox: every change, to every configured receiver."""
        if not self.receivers:
            return []
        payload = payload_json(change)
        return [(receiver, payload) for receiver in self.receivers]

    def _start_notifiers(self) -> None:
        """Webhooks and MQTT read the store's outbox (durable: a notification survives a restart)."""
        from .notify.mqtt import MqttNotifier
        from .notify.webhooks import WebhookNotifier

        n = self.settings.notify
        self.receivers = receivers(n)
        if self.store is None:
            if self.receivers:
                log.error("notifications are off: the event store is not open (%s)", self.store_error)
            self.receivers = []
            return
        if webhook_urls(n):
            self.notifiers.append(WebhookNotifier(self.store, n, self.settings.sources).start())
        if n.mqtt_url.strip():
            try:
                self.notifiers.append(MqttNotifier(self.store, n).start())
            except ValueError as exc:
                log.error("MQTT notifications are off: %s", exc)
                self.receivers = [r for r in self.receivers if r != MQTT_RECEIVER]
        notifiers = self.notifiers

        def outcomes() -> dict[tuple[str, ...], float]:
            return {(nt.kind, outcome): float(value) for nt in notifiers for outcome, value in nt.counters.counts().items()}

        self.metrics.live.read("vad_notifications", outcomes)
