"""MQTT: event changes published to a broker (paho-mqtt 2), from the outbox's "mqtt" rows.

Topics (PREFIX = mqtt_topic_prefix, default "vad"; stream ids with '+', '#', '/' or control
characters have them replaced by '_' so an id can never widen a subscription or add a level):

    PREFIX/events                 every change, the webhook JSON (QoS 1, not retained)
    PREFIX/<stream_id>/anomaly    "ON" at an event's start, "OFF" at its end (QoS 1, retained)
    PREFIX/status                 "online" on connect; "offline" as the last will and on stop (retained)
    homeassistant/binary_sensor/vad_<stream_id>/config   Home Assistant discovery (retained), when
                                  mqtt_home_assistant is on: once per stream after each connect

Delivery: a row is delivered once the broker acknowledged (PUBACK) every message it needs within
mqtt_timeout_s; otherwise, or while the broker is unreachable, it fails with the reason and is retried
on the webhook schedule (webhook_backoff_*, webhook_max_attempts), then given up (kept). MQTT is at
least once: a retried row may publish its event JSON twice (dedupe on event.id + type + peak_frame).

Ordering: a late row never moves a stream's retained state backwards (an older event's OFF after a
newer one's ON is published on PREFIX/events but not as the state). After each reconnect the known
states (and discovery) are published again, since a broker without persistence forgets retained ones.

Connection: paho's network thread connects (socket timeout mqtt_timeout_s), authenticates with
mqtt_username / mqtt_password (or the URL's user-info), uses TLS for mqtts:// (mqtt_tls_ca or the
system's CAs) and reconnects by itself with exponential backoff. The password never reaches a log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ..eventtypes import ChangeKind, Notification, Outbox
from ..netguard import redact_text, redact_url
from ..settings import NotifySettings
from .common import OutcomeCallback, OutcomeCounters, RateLimitedLog, fail_attempt
from .payload import MQTT_RECEIVER

log = logging.getLogger("vad.notify.mqtt")

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
KEEPALIVE_S = 30
DISCOVERY_PREFIX = "homeassistant"
MAX_STREAMS = 10000  # remembered stream states; beyond it the table starts over (states re-learnt)
_UNSAFE_TOPIC = re.compile(r"[+#/\x00-\x1f\x7f]")
_UNSAFE_OBJECT_ID = re.compile(r"[^A-Za-z0-9_-]")


def topic_segment(text: str) -> str:
    """One topic level: no wildcard, separator or control character; never empty."""
    return _UNSAFE_TOPIC.sub("_", text) or "_"


def object_id(text: str) -> str:
    """Home Assistant node/object ids allow [A-Za-z0-9_-] only."""
    return _UNSAFE_OBJECT_ID.sub("_", text) or "_"


def topic_prefix(prefix: str) -> str:
    """'vad', 'home/vad/' -> 'home/vad': levels kept, wildcards and empty levels removed."""
    levels = [topic_segment(level) for level in prefix.split("/") if level]
    return "/".join(levels) or "vad"


class PublishFailed(Exception):
    """A publish the broker did not acknowledge; the message is safe to store and log."""


class MqttNotifier:
    """Delivers the outbox's "mqtt" rows. `start()`, then `stop()`; `counts()`, `connected`,
    `last_error` and `queue_full` for the metrics and the status endpoint.

    `on_outcome(kind, outcome)` (optional) is called with ("mqtt", "delivered" | "failed" | "given_up").
    """

    kind = "mqtt"

    def __init__(
        self,
        outbox: Outbox,
        settings: NotifySettings,
        *,
        on_outcome: OutcomeCallback | None = None,
        poll_interval_s: float = 0.5,
        batch_size: int = 50,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        max_queued_messages: int = 1000,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.mqtt_url.strip():
            raise ValueError("mqtt_url is not set")
        parts = urlsplit(settings.mqtt_url.strip())
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"mqtt_url: scheme {scheme or 'none'!r} is not mqtt:// or mqtts://")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise ValueError(f"mqtt_url: {redact_text(str(exc), settings.mqtt_url)}") from None
        if not parts.hostname:
            raise ValueError("mqtt_url has no host")
        self.outbox = outbox
        self.settings = settings
        self.host = parts.hostname
        self.port = port
        self.tls = scheme == "mqtts"
        self.broker = redact_url(settings.mqtt_url.strip())
        self.prefix = topic_prefix(settings.mqtt_topic_prefix)
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self._clock = clock
        self._url = settings.mqtt_url.strip()
        username = settings.mqtt_username or unquote(parts.username or "")
        password = settings.mqtt_password.get_secret_value() if settings.mqtt_password is not None else ""
        password = password or unquote(parts.password or "")
        self._password = password

        self.counters = OutcomeCounters(self.kind, on_outcome, log)
        self.queue_full = 0  # publishes refused because paho's outgoing queue was full (policy: refuse new)
        self.last_error: str | None = None  # why the broker is not connected (redacted), None when connected
        self._connected = threading.Event()
        self._resync = threading.Event()  # set on connect: publish the known states again
        self._first_try = threading.Event()  # the first connection attempt ended (either way)
        self._lock = threading.Lock()
        self._announced: set[str] = set()  # streams whose discovery config went out on this connection
        self._states: dict[str, tuple[tuple[float, int], str, str]] = {}  # stream -> (order, ON/OFF, name)
        self._warn = RateLimitedLog(log)
        self._logged_error: str | None = None
        self._rng = random.Random()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"vad-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,  # the widest broker support; Home Assistant's default
            clean_session=True,
        )
        client.connect_timeout = settings.mqtt_timeout_s
        client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)  # type: ignore[arg-type]
        client.max_queued_messages_set(max_queued_messages)
        if username:
            client.username_pw_set(username, password or None)
        if self.tls:
            ca = settings.mqtt_tls_ca
            client.tls_set(ca_certs=str(ca) if ca else None, cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        self._client = client

    # ------------------------------------------------------------------ topics

    @property
    def events_topic(self) -> str:
        return f"{self.prefix}/events"

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    def state_topic(self, stream_id: str) -> str:
        return f"{self.prefix}/{topic_segment(stream_id)}/anomaly"

    def discovery_topic(self, stream_id: str) -> str:
        return f"{DISCOVERY_PREFIX}/binary_sensor/vad_{object_id(stream_id)}/config"

    def discovery_config(self, stream_id: str, stream_name: str) -> dict[str, Any]:
        unique = f"vad_{object_id(stream_id)}"
        return {
            "name": f"{stream_name} anomaly",
            "unique_id": unique,
            "object_id": unique,
            "state_topic": self.state_topic(stream_id),
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "problem",
            "availability_topic": self.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
        }

    # ------------------------------------------------------------------ public

    def __repr__(self) -> str:
        return f"MqttNotifier(broker={self.broker!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> MqttNotifier:
        if self._started:
            raise RuntimeError("MQTT notifier already started")
        self._started = True
        self.last_error = "connecting"
        # connect_async + loop_start: paho's thread connects, and reconnects with backoff, by itself.
        self._client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="vad-mqtt", daemon=True)
        self._thread.start()
        log.info("MQTT: publishing to %s (topics %s/...)", self.broker, self.prefix)
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Publish "offline", disconnect, end both threads; True when they ended within `timeout`."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if not self._started:
            return True
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._connected.is_set():
            # A clean disconnect sends no will, so say "offline" ourselves (best effort, short wait).
            info = self._client.publish(self.status_topic, "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.0, min(1.0, deadline - time.monotonic())))
        self._client.disconnect()
        # paho's loop_stop() joins without a timeout: run it aside so stop() keeps its bound.
        stopper = threading.Thread(target=self._client.loop_stop, name="vad-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(max(0.0, deadline - time.monotonic()))
        worker_done = self._thread is None or not self._thread.is_alive()
        return worker_done and not stopper.is_alive()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counts(self) -> dict[str, int]:
        return self.counters.counts()

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._set_error(f"broker refused the connection: {reason}", level=logging.ERROR)
            self._first_try.set()
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)  # no wait: never block this thread
        with self._lock:
            self._announced.clear()
        self.last_error = None
        self._logged_error = None
        self._connected.set()
        self._resync.set()
        self._first_try.set()
        self._wake.set()
        log.info("MQTT: connected to %s", self.broker)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError`, so the exception is still at hand.
        exc = sys.exc_info()[1]
        why = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        self._set_error(f"cannot connect to {self.host}:{self.port}{why} (retrying with backoff)")
        self._first_try.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if self._stop.is_set():
            return
        if was:
            self._set_error(f"connection to the broker lost ({reason}); reconnecting")
        elif self.last_error in (None, "connecting"):
            self._set_error(f"disconnected ({reason}); reconnecting")

    def _set_error(self, error: str, level: int = logging.WARNING) -> None:
        error = self._redact(error)
        self.last_error = error
        if error != self._logged_error:  # each distinct reason once: a down broker must not flood the log
            self._logged_error = error
            log.log(level, "MQTT %s: %s", self.broker, error)

    # ------------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        # Rows due at start-up wait for the first connection attempt (mqtt_timeout_s at most), so
        # they do not spend an attempt on "connecting".
        deadline = time.monotonic() + self.settings.mqtt_timeout_s
        while not self._stop.is_set() and not self._first_try.is_set() and time.monotonic() < deadline:
            self._first_try.wait(0.05)
        try:
            while not self._stop.is_set():
                if self._resync.is_set() and self._connected.is_set():
                    self._resync.clear()
                    self._republish_states()
                try:
                    rows = self.outbox.due(MQTT_RECEIVER, self._clock(), self.batch_size)
                except Exception as exc:  # noqa: BLE001 - a database hiccup: try again at the next poll
                    self._warn.warning("outbox", "MQTT: reading the outbox failed: %s", exc)
                    rows = []
                for row in rows:
                    if self._stop.is_set():
                        return
                    self._deliver(row)
                if len(rows) < self.batch_size:
                    self._wake.wait(self.poll_interval_s)
                    self._wake.clear()
        except Exception as exc:  # noqa: BLE001 - last resort: never die silently
            log.error("MQTT thread crashed: %s", self._redact(str(exc)))

    def _deliver(self, row: Notification) -> None:
        try:
            change = json.loads(row.payload)
            event = change["event"]
            stream_id, stream_name = str(event["stream_id"]), str(event.get("stream_name") or event["stream_id"])
            started = _epoch(event.get("started_at"))
        except (ValueError, KeyError, TypeError):
            self._record(row, "payload is not an event change", give_up=True)
            return
        if not self._connected.is_set():
            self._record(row, f"broker not connected: {self.last_error or 'connecting'}")
            return
        deadline = time.monotonic() + self.settings.mqtt_timeout_s
        try:
            self._announce(stream_id, stream_name, deadline)
            self._publish(self.events_topic, row.payload, retain=False, deadline=deadline)
            state = {ChangeKind.START: "ON", ChangeKind.END: "OFF"}.get(row.kind)
            if state is not None:
                order = (started, 0 if state == "ON" else 1)
                with self._lock:
                    newer = stream_id not in self._states or order >= self._states[stream_id][0]
                if newer:
                    self._publish(self.state_topic(stream_id), state, retain=True, deadline=deadline)
                    with self._lock:
                        if len(self._states) >= MAX_STREAMS and stream_id not in self._states:
                            self._states.clear()
                        self._states[stream_id] = (order, state, stream_name)
        except PublishFailed as exc:
            self._record(row, str(exc))
            return
        try:
            self.outbox.delivered(row.id)
        except Exception as exc:  # noqa: BLE001 - the row stays due: published again (at least once)
            self._warn.warning("outbox", "MQTT: marking notification %d delivered failed: %s", row.id, exc)
            return
        self.counters.count("delivered")

    def _announce(self, stream_id: str, stream_name: str, deadline: float) -> None:
        if not self.settings.mqtt_home_assistant:
            return
        with self._lock:
            if stream_id in self._announced:
                return
        config = json.dumps(self.discovery_config(stream_id, stream_name), separators=(",", ":"))
        self._publish(self.discovery_topic(stream_id), config, retain=True, deadline=deadline)
        with self._lock:
            if len(self._announced) >= MAX_STREAMS:
                self._announced.clear()
            self._announced.add(stream_id)

    def _republish_states(self) -> None:
        """After a (re)connect: discovery and the last state of every known stream, retained again."""
        with self._lock:
            states = [(stream, state, name) for stream, (_order, state, name) in self._states.items()]
        for stream, state, name in states:
            if self._stop.is_set() or not self._connected.is_set():
                return
            deadline = time.monotonic() + self.settings.mqtt_timeout_s
            try:
                self._announce(stream, name, deadline)
                self._publish(self.state_topic(stream), state, retain=True, deadline=deadline)
            except PublishFailed as exc:
                self._warn.warning("resync", "MQTT: republishing stream states failed: %s", exc)
                return

    def _publish(self, topic: str, payload: str, *, retain: bool, deadline: float) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.queue_full += 1
            raise PublishFailed("the MQTT client's outgoing queue is full (message refused; retried later)")
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            raise PublishFailed(f"broker not connected: {self.last_error or 'connection lost'}")
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as exc:
            raise PublishFailed(f"publish to {topic} failed: {exc}") from None
        if not info.is_published():
            raise PublishFailed(f"no acknowledgement (PUBACK) for {topic} within {self.settings.mqtt_timeout_s:g} s")

    def _record(self, row: Notification, error: str, give_up: bool = False) -> None:
        error = self._redact(error)[:300]
        try:
            attempts, give_up = fail_attempt(self.outbox, self.settings, row, error, give_up, self._clock, self._rng)
        except Exception as exc:  # noqa: BLE001 - the row stays due and is tried again
            self._warn.warning("outbox", "MQTT: recording a failed notification failed: %s", exc)
            return
        self.counters.count("failed")
        if give_up:
            self.counters.count("given_up")
            log.warning("MQTT: gave up on notification %d (event %s, %s) after %d attempts: %s",
                        row.id, row.event_id, row.kind.value, attempts, error)
        else:
            self._warn.warning("delivery", "MQTT: delivery failed (attempt %d of %d, retrying): %s",
                               attempts, self.settings.webhook_max_attempts, error)

    def _redact(self, text: str) -> str:
        text = redact_text(text, self._url)
        if self._password:
            text = text.replace(self._password, "***")
        return text


def _epoch(iso: Any) -> float:
    """'2024-05-01T12:00:00.250Z' -> seconds since the epoch (0.0 when missing: oldest)."""
    if not isinstance(iso, str):
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
