"""Live sources: an RTSP/HTTP camera decoded in its own thread, feeding a stream's ring buffer.

Why PyAV rather than cv2.VideoCapture: PyAV takes FFmpeg options per container (protocol whitelist,
RTSP transport, probe sizes) where OpenCV only reads the process-wide OPENCV_FFMPEG_CAPTURE_OPTIONS
(which would also forbid `file` to every other VideoCapture in the process, e.g. `vad evaluate` on
.avi files); its `timeout=(open, read)` arms FFmpeg's interrupt callback for the open and for every
read; it raises typed errors (401, connection refused, timeout) instead of returning False; and it
exposes each frame's presentation time, used to detect gaps. Both decode with the same libavcodec.

Threads per source: a *grabber* that opens, reads and decodes as fast as the camera sends (so the
socket never backs up and FFmpeg never buffers old frames) and keeps only the newest frame in a
one-slot mailbox; and a *deliverer* that converts that frame to BGR and hands it to the sink. Any
frame overwritten before the deliverer took it is dropped ("stale"); frames thinned to `max_fps`
are dropped before conversion ("max_fps"); a frame older than `max_frame_age_s` when the deliverer
gets to it is dropped too ("stale"). All sink calls happen on the deliverer thread, in order.

Settings: `service.settings.SourceSettings` (VAD_SOURCE_*, VAD_ALLOWED_SOURCE_NETWORKS).
Failure policy: every open has `open_timeout_s`, every read `stall_timeout_s`. A failed open or a
lost connection sets state "reconnecting", resets the sink's ring buffer and reopens after an
exponential backoff (initial * factor^n, capped at `backoff_max_s`, with jitter); the backoff starts
over once a connection delivered a frame. No decoded frame for `stall_timeout_s` while connected is a
stall: counted, and the source is reopened. The URL is checked again before every open (DNS may
change); a refused URL ends the source in state "failed".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .domain import DropReason, StreamState
from .netguard import FFMPEG_PROTOCOL_WHITELIST, SourceRefused, check_source_url, redact_text, redact_url
from .settings import SourceSettings

log = logging.getLogger(__name__)

__all__ = ["FrameSink", "LiveSource", "NullSourceMetrics", "SourceMetrics", "SourceRefused", "source_factory"]

# The demuxers a live source may use; anything else (concat, image2, sdp, ...) is refused by FFmpeg.
FFMPEG_FORMAT_WHITELIST = "rtsp,hls,mpjpeg,mjpeg,mpegts,flv,matroska,webm,mov,mp4,h264,hevc"


@runtime_checkable
class FrameSink(Protocol):
    """What a live source feeds: one stream (service.streams.StreamSink). All calls come from one
    thread, in order."""

    def submit_frame(self, frame: np.ndarray, timestamp: float) -> object:
        """A decoded BGR uint8 frame (H, W, 3) and its receipt time (seconds since the epoch).

        May block until the frame is accepted (or scored): the source keeps only the newest frame
        meanwhile, so blocking is how a slow consumer pushes back. Exceptions are logged and counted.
        """

    def reset(self) -> None:
        """Empty the ring buffer: the next frame does not continue the previous ones."""

    def set_state(self, state: str, reason: str | None = None) -> None:
        """starting | running | reconnecting | stopped | failed, and why (credentials redacted)."""


class SourceMetrics(Protocol):
    """Where a live source counts; service.metrics.ServiceMetrics is one."""

    def reconnect(self, stream: str) -> None: ...
    def stall(self, stream: str) -> None: ...
    def dropped(self, stream: str, reason: DropReason, count: int = 1) -> None: ...


class NullSourceMetrics:
    def reconnect(self, stream: str) -> None:
        pass

    def stall(self, stream: str) -> None:
        pass

    def dropped(self, stream: str, reason: DropReason, count: int = 1) -> None:
        pass


def ffmpeg_options(settings: SourceSettings, scheme: str) -> dict[str, str]:
    """The FFmpeg options of one open: whitelists, low-latency probing, transport and timeouts."""
    options = {
        "protocol_whitelist": FFMPEG_PROTOCOL_WHITELIST,
        "format_whitelist": FFMPEG_FORMAT_WHITELIST,
        "analyzeduration": "1000000",  # 1 s of probing at most: live sources, low start-up latency
        "probesize": "1000000",
        "fflags": "nobuffer+discardcorrupt",
        "flags": "low_delay",
        "user_agent": "desdnet-vad",
    }
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = settings.rtsp_transport
        options["timeout"] = str(int(settings.stall_timeout_s * 1e6))  # socket I/O timeout, microseconds
    if scheme in ("https", "rtsps") and settings.tls_verify:
        options["tls_verify"] = "1"
    options.update({str(k): str(v) for k, v in settings.extra_options.items()})
    return options


def backoff_delay(settings: SourceSettings, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before reopen number `attempt` (1, 2, ...): initial * factor^(n-1), capped, with jitter."""
    base = min(settings.backoff_max_s, settings.backoff_initial_s * settings.backoff_factor ** max(0, attempt - 1))
    jitter = (rng or random).uniform(-settings.backoff_jitter, settings.backoff_jitter)
    return max(0.0, min(settings.backoff_max_s, base * (1.0 + jitter)))


def _open_pyav(url: str, options: dict[str, str], timeout: tuple[float, float]):
    import av

    return av.open(url, mode="r", options=options, timeout=timeout)


Opener = Callable[[str, dict[str, str], tuple[float, float]], Any]


@dataclass
class _Pending:
    frame: Any  # av.VideoFrame, converted only if delivered
    received: float  # time.monotonic() at decode
    wall: float  # time.time() at decode


class LiveSource:
    """One live camera feeding one sink. `start()`, then `stop()`; `stats()` for the API.

    The URL is checked (scheme, host, resolved addresses) in the constructor: a refused one raises
    SourceRefused before any thread or connection exists.
    """

    def __init__(
        self,
        url: str,
        sink: FrameSink,
        *,
        stream_id: str = "stream",
        settings: SourceSettings | None = None,
        max_fps: float | None = None,
        metrics: SourceMetrics | None = None,
        opener: Opener | None = None,
        resolver=None,
    ) -> None:
        # Plain defaults (no environment) when none are given: the service passes its own.
        self.settings = settings or SourceSettings.model_construct()
        self.stream_id = stream_id
        self._resolver = resolver
        self._url = url
        check_source_url(url, self.settings.allowed_networks, resolve_timeout=self.settings.resolve_timeout_s,
                         resolver=resolver)
        self.source = redact_url(url)
        if max_fps is not None and not max_fps > 0:
            raise ValueError("max_fps must be > 0")
        self.max_fps = max_fps
        self._sink = sink
        self._metrics: SourceMetrics = metrics or NullSourceMetrics()
        self._opener = opener or _open_pyav
        self._rng = random.Random()

        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._state = StreamState.STARTING
        self._state_reason: str | None = None
        self._notified_state: StreamState | None = None
        self._pending: _Pending | None = None
        self._reset_pending = False
        self._grabber_done = False
        self._epoch = 0  # connection number
        self._connected_epoch = -1  # epoch whose connection is open now (-1: none)
        self._stall_epoch = -1  # last epoch whose stall was counted
        self._last_frame_at = 0.0  # monotonic, last decoded frame of the current connection
        self._threads: list[threading.Thread] = []
        self._sink_warned_at: dict[str, float] = {}

        # Stats (read by stats(); ints under the GIL)
        self.frames_decoded = 0
        self.frames_delivered = 0
        self.reconnects = 0
        self.stalls = 0
        self.dropped: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_frame_age_s: float | None = None  # receipt -> handover of the last delivered frame
        self.max_frame_age_s_seen = 0.0
        self.connected_at: float | None = None  # monotonic time the current connection opened

    # ------------------------------------------------------------------ public

    def __repr__(self) -> str:
        return f"LiveSource(stream={self.stream_id!r}, source={self.source!r}, state={self.state.value})"

    __str__ = __repr__

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def state_reason(self) -> str | None:
        return self._state_reason

    def start(self) -> LiveSource:
        if self._threads:
            raise RuntimeError("source already started")
        grabber = threading.Thread(target=self._grab_loop, name=f"vad-grab-{self.stream_id}", daemon=True)
        deliverer = threading.Thread(target=self._deliver_loop, name=f"vad-deliver-{self.stream_id}", daemon=True)
        self._threads = [grabber, deliverer]
        self._notify_state(StreamState.STARTING, None)
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop both threads; True when they ended within `timeout` (default settings.stop_timeout_s).

        The sink gets no call after stop() returns but a final set_state("stopped"). A grabber
        blocked in an FFmpeg call ends by itself when that call's timeout fires, closing the socket.
        """
        timeout = self.settings.stop_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stop.set()
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        ended = not any(t.is_alive() for t in self._threads)
        if self._state is not StreamState.FAILED:
            self._state = StreamState.STOPPED
        self._call_sink("set_state", self._state.value, self._state_reason)
        return ended

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def drops(self) -> dict[str, int]:
        """Frames dropped before they reached the stream, by reason (StreamSource.drops)."""
        return {str(reason): count for reason, count in dict(self.dropped).items()}

    def stats(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "state": self._state.value,
            "state_reason": self._state_reason,
            "frames_decoded": self.frames_decoded,
            "frames_delivered": self.frames_delivered,
            "frames_dropped": dict(self.dropped),
            "reconnects": self.reconnects,
            "stalls": self.stalls,
            "last_error": self.last_error,
            "last_frame_age_s": self.last_frame_age_s,
            "max_fps": self.max_fps,
        }

    # ------------------------------------------------------------------ helpers

    def _safe(self, text: object) -> str:
        return redact_text(str(text), self._url)

    def _count(self, method: str, *args: Any) -> None:
        """One call to the metrics; none once stopped: a deleted stream's series are already gone, and
        a grabber still finishing a read must not bring them back."""
        if self._stop.is_set():
            return
        try:
            getattr(self._metrics, method)(self.stream_id, *args)
        except Exception:  # noqa: BLE001 - metrics never break the source
            log.exception("source metrics failed")

    def _drop(self, reason: DropReason, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        self._count("dropped", reason, count)

    def _set_state(self, state: StreamState, reason: str | None = None, reset: bool = False) -> None:
        with self._lock:
            if self._stop.is_set() and state not in (StreamState.FAILED,):
                return
            self._state = state
            self._state_reason = reason
            if reset:
                self._reset_pending = True
                if self._pending is not None:
                    self._pending = None
                    self._drop(DropReason.STALE)
            self._lock.notify_all()

    def _notify_state(self, state: StreamState, reason: str | None) -> None:
        if state is not self._notified_state:
            self._notified_state = state
            self._call_sink("set_state", state.value, reason)

    def _call_sink(self, method: str, *args: Any) -> bool:
        try:
            getattr(self._sink, method)(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - a failing sink must not kill the source
            now = time.monotonic()
            if now - self._sink_warned_at.get(method, -1e9) >= 10.0:  # at most one warning per 10 s
                self._sink_warned_at[method] = now
                log.warning("stream %s: sink.%s failed: %s", self.stream_id, method, self._safe(exc))
            return False

    def _count_stall(self, epoch: int, how: str) -> bool:
        with self._lock:
            if self._stall_epoch == epoch:
                return False
            self._stall_epoch = epoch
        self.stalls += 1
        self._count("stall")
        log.warning("stream %s: source %s stalled (%s); reopening", self.stream_id, self.source, how)
        return True

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        return self._stop.wait(seconds)

    # ------------------------------------------------------------------ grabber

    def _grab_loop(self) -> None:
        attempt = 0  # consecutive failed opens
        opened_before = False
        try:
            while not self._stop.is_set():
                if opened_before or attempt:
                    self.reconnects += 1
                    self._count("reconnect")
                try:
                    checked = check_source_url(
                        self._url, self.settings.allowed_networks,
                        resolve_timeout=self.settings.resolve_timeout_s, resolver=self._resolver,
                    )
                except SourceRefused as exc:
                    self.last_error = self._safe(exc)
                    log.error("stream %s: source %s refused: %s", self.stream_id, self.source, self.last_error)
                    self._set_state(StreamState.FAILED, self.last_error, reset=True)
                    return
                target = checked.pinned_url() if self.settings.pin_address and checked.scheme == "rtsp" else self._url
                container = None
                try:
                    container = self._opener(
                        target, ffmpeg_options(self.settings, checked.scheme),
                        (self.settings.open_timeout_s, self.settings.stall_timeout_s),
                    )
                    video = container.streams.video
                    if not video:
                        raise OSError("the source has no video stream")
                except Exception as exc:  # noqa: BLE001 - any open failure: back off and retry
                    if container is not None:
                        self._close(container)
                    attempt += 1
                    self.last_error = redact_text(str(exc), self._url, target)
                    if self._stop.is_set():
                        return
                    log.warning("stream %s: cannot open %s (attempt %d): %s", self.stream_id, self.source,
                                attempt, self.last_error)
                    if self._permanent(exc) or (
                        self.settings.max_attempts is not None and attempt >= self.settings.max_attempts
                    ):
                        self._set_state(StreamState.FAILED, self.last_error, reset=True)
                        return
                    self._set_state(StreamState.RECONNECTING, self.last_error, reset=opened_before)
                    if self._sleep(backoff_delay(self.settings, attempt, self._rng)):
                        return
                    continue

                opened_before = True
                log.info("stream %s: opened %s", self.stream_id, self.source)
                try:
                    outcome, got_frames = self._read(container, video[0])
                finally:
                    with self._lock:
                        self._connected_epoch = -1
                    self._close(container)
                if self._stop.is_set():
                    return
                if got_frames:
                    attempt = 0
                attempt += 1
                self._set_state(StreamState.RECONNECTING, outcome, reset=True)
                log.warning("stream %s: source %s lost (%s); reconnecting", self.stream_id, self.source, outcome)
                if self._sleep(backoff_delay(self.settings, attempt, self._rng)):
                    return
        except Exception as exc:  # noqa: BLE001 - last resort: never die silently
            self.last_error = self._safe(exc)
            log.error("stream %s: source thread crashed: %s", self.stream_id, self.last_error)
            self._set_state(StreamState.FAILED, self.last_error, reset=True)
        finally:
            with self._lock:
                self._grabber_done = True
                self._lock.notify_all()

    @staticmethod
    def _permanent(exc: BaseException) -> bool:
        """Errors no retry can fix: FFmpeg refusing a protocol or format we do not allow."""
        text = str(exc)
        return "not on whitelist" in text or "Protocol not found" in text

    @staticmethod
    def _close(container: Any) -> None:
        with contextlib.suppress(Exception):
            container.close()

    def _read(self, container: Any, stream: Any) -> tuple[str, bool]:
        """Demux and decode until stopped, stalled or lost: (what ended it, whether frames came)."""
        import av

        codec = stream.codec_context
        try:
            codec.thread_type = "SLICE"
            codec.thread_count = max(1, self.settings.decoder_threads)
        except Exception:  # noqa: BLE001 - some decoders refuse; defaults are fine
            pass
        now = time.monotonic()
        with self._lock:
            self._epoch += 1
            epoch = self._epoch
            self._connected_epoch = epoch
            self._last_frame_at = now
        self.connected_at = now
        got_frames = False
        last_src_time: float | None = None
        last_received: float | None = None
        next_due: float | None = None
        interval = 1.0 / self.max_fps if self.max_fps else 0.0
        stall = self.settings.stall_timeout_s
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return "stopped", got_frames
                if self._stall_epoch == epoch:
                    return "stalled", got_frames
                try:
                    frames = packet.decode()
                except (av.error.InvalidDataError, av.error.UndefinedError) as exc:
                    self._drop(DropReason.DECODE_ERROR)
                    log.debug("stream %s: decode error: %s", self.stream_id, self._safe(exc))
                    frames = []
                now = time.monotonic()
                for frame in frames:
                    wall = time.time()
                    self.frames_decoded += 1
                    with self._lock:
                        self._last_frame_at = now
                    src_time = frame.time
                    gap = (
                        last_received is not None and now - last_received > self.settings.gap_reset_s
                    ) or (
                        src_time is not None and last_src_time is not None
                        and not (0 <= src_time - last_src_time <= self.settings.gap_reset_s)
                    )
                    last_received = now
                    last_src_time = src_time if src_time is not None else last_src_time
                    if not got_frames:
                        got_frames = True
                        self._set_state(StreamState.RUNNING, None)
                    elif gap:
                        log.info("stream %s: timestamp gap; resetting the ring buffer", self.stream_id)
                        self._set_state(StreamState.RUNNING, None, reset=True)
                        next_due = None
                    if interval:
                        clock = src_time if src_time is not None else now
                        if next_due is None or clock - next_due > interval:
                            next_due = clock
                        if clock + 0.1 * interval < next_due:
                            self._drop(DropReason.MAX_FPS)
                            continue
                        next_due += interval
                    with self._lock:
                        if self._pending is not None:
                            self._drop(DropReason.STALE)
                        self._pending = _Pending(frame, now, wall)
                        self._lock.notify_all()
                if now - self._last_frame_at > stall:
                    self._count_stall(epoch, f"packets but no decoded frame for {stall:g} s")
                    return "stalled", got_frames
        except av.error.ExitError:
            # FFmpeg's interrupt callback: the read timeout (stall_timeout_s) fired.
            if self._stop.is_set():
                return "stopped", got_frames
            self._count_stall(epoch, f"no data for {stall:g} s")
            return "stalled", got_frames
        except (av.error.FFmpegError, OSError) as exc:
            self.last_error = self._safe(exc)
            if time.monotonic() - self._last_frame_at > stall and not self._stop.is_set():
                self._count_stall(epoch, self.last_error)
                return "stalled", got_frames
            return f"read error: {self.last_error}", got_frames
        return "end of stream", got_frames

    # ------------------------------------------------------------------ deliverer

    def _deliver_loop(self) -> None:
        tick = min(0.25, self.settings.stall_timeout_s / 4)
        while True:
            with self._lock:
                while (
                    not self._stop.is_set()
                    and self._pending is None
                    and not self._reset_pending
                    and self._notified_state is self._state
                    and not self._grabber_done
                ):
                    if not self._lock.wait(tick):
                        break
                if self._stop.is_set():
                    return
                item, self._pending = self._pending, None
                reset, self._reset_pending = self._reset_pending, False
                state, reason = self._state, self._state_reason
                grabber_done = self._grabber_done
                connected, last_frame_at = self._connected_epoch, self._last_frame_at

            # Watchdog: a connection that has gone quiet is a stall even while FFmpeg still waits.
            quiet = connected >= 0 and time.monotonic() - last_frame_at > self.settings.stall_timeout_s
            if quiet and self._count_stall(connected, f"no frame for {self.settings.stall_timeout_s:g} s"):
                self._set_state(StreamState.RECONNECTING, "stalled", reset=True)
                continue
            if reset:
                self._call_sink("reset")
            self._notify_state(state, reason)
            if item is not None:
                self._deliver(item)
            if grabber_done and item is None and not reset:
                with self._lock:
                    if self._pending is None and not self._reset_pending and self._notified_state is self._state:
                        return

    def _deliver(self, item: _Pending) -> None:
        age = time.monotonic() - item.received
        if age > self.settings.max_frame_age_s:
            self._drop(DropReason.STALE)
            return
        try:
            image = item.frame.to_ndarray(format="bgr24")
        except Exception as exc:  # noqa: BLE001
            self._drop(DropReason.DECODE_ERROR)
            log.debug("stream %s: frame conversion failed: %s", self.stream_id, self._safe(exc))
            return
        if self._stop.is_set():
            return
        age = time.monotonic() - item.received
        self.last_frame_age_s = age
        self.max_frame_age_s_seen = max(self.max_frame_age_s_seen, age)
        if self._call_sink("submit_frame", image, item.wall):
            self.frames_delivered += 1
        else:
            self._drop(DropReason.SINK_ERROR)


SOURCE_OPTIONS = ("max_fps",)


def source_factory(request: Any, manager: Any, settings: SourceSettings) -> LiveSource:
    """service.streams' SourceFactory (bind `settings` with functools.partial, as the app does):
    POST /v1/streams {"source": "rtsp://...", "options": {"max_fps": 5}}.

    Raises SourceRefused (a ValueError: the manager answers 422) for a URL that may not be opened or
    an unknown option.
    """
    options = dict(getattr(request, "options", None) or {})
    unknown = sorted(set(options) - set(SOURCE_OPTIONS))
    if unknown:
        raise SourceRefused(f"unknown live-source option(s) {', '.join(map(repr, unknown))}; "
                            f"allowed: {', '.join(SOURCE_OPTIONS)}")
    max_fps = options.get("max_fps")
    if max_fps is not None:
        try:
            max_fps = float(max_fps)
        except (TypeError, ValueError, OverflowError):
            raise SourceRefused("max_fps must be a number of frames per second") from None
        if not 0 < max_fps <= 1000:
            raise SourceRefused("max_fps must be > 0 and <= 1000")
    return LiveSource(
        request.source, manager.sink(request.stream_id), stream_id=request.stream_id, settings=settings,
        max_fps=max_fps, metrics=manager.metrics,
    )


def factory_for(settings: SourceSettings) -> Callable[[Any, Any], LiveSource]:
    """The SourceFactory of the app: live sources with these settings."""
    return functools.partial(source_factory, settings=settings)
