"""Event notifications against real receivers: webhooks to an HTTP server on 127.0.0.1, MQTT through
a Mosquitto broker started here (Debian package `mosquitto`). The outbox is tests/support/outbox.py's
MemoryOutbox (a stand-in for the database one). No timing assertions: waits only bound how long a
broken build may hang."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from service.eventtypes import Box, ChangeKind, EndReason, EventChange, EventRecord
from service.notify.mqtt import MqttNotifier
from service.notify.payload import payload_json, receivers, webhook_receiver_id
from service.notify.webhooks import WebhookNotifier
from service.settings import NotifySettings, SourceSettings
from tests.support.outbox import MemoryOutbox

SECRET = "whsec-test-Zq8w1"
MQTT_USER = "vad"
MQTT_PASSWORD = "mqtt-pw-K3v9"
WAIT_S = 30.0  # how long a broken build may hang a test, not an expected duration
LOOPBACK = SourceSettings(allowed_networks="127.0.0.0/8")


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def notify_settings(**overrides: Any) -> NotifySettings:
    values: dict[str, Any] = {
        "webhook_secret": SecretStr(SECRET), "webhook_timeout_s": 5.0, "webhook_max_attempts": 10,
        "webhook_backoff_initial_s": 0.01, "webhook_backoff_max_s": 0.05, "mqtt_timeout_s": 5.0,
    }
    values.update(overrides)
    return NotifySettings(**values)


def change(kind: ChangeKind, event_id: str | None = None, stream_id: str = "cam1", started: float = 1_714_564_800.0,
           ended: bool = False) -> EventChange:
    record = EventRecord(
        id=event_id or uuid.uuid4().hex, stream_id=stream_id, stream_name="Front door", model="ped2",
        started_at=started, start_frame=100, peak_score=4.25, peak_frame=112, peak_at=started + 1.2,
        box=Box(10, 20, 64, 48), frames_above=9, threshold=3.0,
        ended_at=started + 4.5 if ended else None, end_frame=145 if ended else None,
        end_reason=EndReason.RELEASED if ended else None,
    )
    return EventChange(kind, record)


def enqueue_event(outbox: MemoryOutbox, settings: NotifySettings, stream_id: str = "cam1",
                  started: float = 1_714_564_800.0) -> list[EventChange]:
    """start, update, end of one event, enqueued for every receiver the settings name."""
    event_id = uuid.uuid4().hex
    changes = [change(ChangeKind.START, event_id, stream_id, started),
               change(ChangeKind.UPDATE, event_id, stream_id, started),
               change(ChangeKind.END, event_id, stream_id, started, ended=True)]
    for item in changes:
        outbox.enqueue(item.event.id, item.kind, payload_json(item), receivers(settings))
    return changes


def assert_no_secret(caplog: pytest.LogCaptureFixture, outbox: MemoryOutbox, *secrets: str) -> None:
    stored = [error for row in outbox.rows() for error in row.errors]
    text = "\n".join([caplog.text, *stored, *(r.getMessage() for r in caplog.records)])
    for secret in secrets:
        assert secret not in text


# --- a real HTTP receiver ------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread. `answer(hit_number, path)` says what each request
    gets: an int status, ("redirect", location) or "hang" (no answer until the test ends)."""

    def __init__(self, answer: Callable[[int, str], Any] = lambda n, path: 200) -> None:
        self.answer = answer
        self.hits: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    number = len(receiver.hits)
                    what = receiver.answer(number, self.path)
                    receiver.hits.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                          "answer": what})
                if what == "hang":
                    receiver.release.wait(WAIT_S)
                    return
                if isinstance(what, tuple):
                    self.send_response(302)
                    self.send_header("Location", what[1])
                else:
                    self.send_response(what)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [h for h in self.hits if h["path"] == path and h["answer"] == 200]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def running(notifier: Any) -> Iterator[Any]:
    notifier.start()
    try:
        yield notifier
    finally:
        assert notifier.stop(timeout=10.0), "the notifier's threads did not end"


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


# --- payload -------------------------------------------------------------------------------------


def test_payload_shape_and_receiver_ids() -> None:
    open_event = json.loads(payload_json(change(ChangeKind.START, "ab" * 16)))
    assert open_event["type"] == "start"
    event = open_event["event"]
    assert event["started_at"] == "2024-05-01T12:00:00.000Z" and event["peak_at"] == "2024-05-01T12:00:01.200Z"
    assert event["ended_at"] is event["duration_s"] is event["end_frame"] is event["end_reason"] is None
    assert event["box"] == {"x": 10, "y": 20, "w": 64, "h": 48}
    assert event["snapshot_url"] == f"/v1/events/{'ab' * 16}/snapshot.jpg"
    assert event["clip_url"] == f"/v1/events/{'ab' * 16}/clip.mp4"
    ended = json.loads(payload_json(change(ChangeKind.END, "e", ended=True)))["event"]
    assert (ended["duration_s"], ended["end_reason"], ended["ended_at"]) == (4.5, "released", "2024-05-01T12:00:04.500Z")
    url = "https://user:pw@hooks.example.com/x"
    settings = NotifySettings(webhook_urls=f" {url} ,,{url},http://b.example/", mqtt_url="mqtt://broker:1883")
    assert receivers(settings) == [
        "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16], webhook_receiver_id("http://b.example/"), "mqtt",
    ]
    assert receivers(NotifySettings(webhook_urls="", mqtt_url="")) == []


# --- webhooks ------------------------------------------------------------------------------------


def test_webhooks_retry_failures_then_deliver_each_notification_once_signed(
    caplog_debug: pytest.LogCaptureFixture,
) -> None:
    failures = 4
    with Receiver(lambda n, path: 500 if n < failures else 200) as receiver:
        urls = [receiver.url("/a"), receiver.url("/b")]
        settings = notify_settings(webhook_urls=",".join(urls))
        outbox = MemoryOutbox()
        changes = enqueue_event(outbox, settings)
        with running(WebhookNotifier(outbox, settings, LOOPBACK, poll_interval_s=0.02)) as notifier:
            wait_for(lambda: outbox.settled(), "every webhook row delivered")
        rows = outbox.rows()
        assert len(rows) == 2 * len(changes) and all(r.delivered and not r.given_up for r in rows)
        assert all(outbox.delivered_calls[r.notification.id] == 1 for r in rows)
        for url, path in zip(urls, ("/a", "/b"), strict=True):
            mine = {r.notification.id: r.notification for r in rows if r.notification.receiver == webhook_receiver_id(url)}
            accepted = receiver.accepted(path)
            # Exactly one accepted POST per row of this receiver, each carrying its row id.
            assert sorted(int(h["headers"]["X-VAD-Delivery"]) for h in accepted) == sorted(mine)
            for hit in accepted:
                row = mine[int(hit["headers"]["X-VAD-Delivery"])]
                assert hit["body"] == row.payload.encode()
                assert hit["headers"]["Content-Type"] == "application/json"
                assert hit["headers"]["X-VAD-Event"] == row.kind.value
                expected = "sha256=" + hmac.new(SECRET.encode(), hit["body"], hashlib.sha256).hexdigest()
                assert hmac.compare_digest(hit["headers"]["X-VAD-Signature"], expected)
        # The failed attempts were retries of the same rows (same delivery ids), later accepted.
        failed_ids = {int(h["headers"]["X-VAD-Delivery"]) for h in receiver.hits if h["answer"] == 500}
        assert len([h for h in receiver.hits if h["answer"] == 500]) == failures
        assert failed_ids <= {r.notification.id for r in rows}
        assert all("HTTP 500" in e for r in rows for e in r.errors)
        assert notifier.counts() == {"delivered": 6, "failed": failures, "given_up": 0}
        body = json.loads(rows[0].notification.payload)
        assert body["type"] == "start" and body["event"]["clip_url"].endswith("/clip.mp4")
    assert_no_secret(caplog_debug, outbox, SECRET)


def test_webhook_host_name_is_checked_and_the_checked_address_used() -> None:
    """A name resolves through the guard once; the POST goes to that address with the name as Host."""
    looked_up: list[str] = []

    def resolver(host: str, port: int, timeout: float) -> list[ipaddress.IPv4Address]:
        looked_up.append(host)
        return [ipaddress.IPv4Address("127.0.0.1")]

    with Receiver() as receiver:
        url = f"http://hooks.invalid:{receiver.port}/named"  # .invalid never resolves: only the pin reaches it
        settings = notify_settings(webhook_urls=url)
        outbox = MemoryOutbox()
        outbox.enqueue("e1", ChangeKind.START, payload_json(change(ChangeKind.START, "e1")), receivers(settings))
        with running(WebhookNotifier(outbox, settings, LOOPBACK, poll_interval_s=0.02, resolver=resolver)):
            wait_for(lambda: outbox.settled(), "the row delivered")
        assert outbox.rows()[0].delivered
        assert receiver.hits[0]["headers"]["Host"] == f"hooks.invalid:{receiver.port}"
        assert "hooks.invalid" in looked_up


def test_hanging_receiver_times_out_and_is_retried() -> None:
    with Receiver(lambda n, path: "hang" if n == 0 else 200) as receiver:
        settings = notify_settings(webhook_urls=receiver.url(), webhook_timeout_s=1.0)
        outbox = MemoryOutbox()
        outbox.enqueue("e1", ChangeKind.START, payload_json(change(ChangeKind.START, "e1")), receivers(settings))
        with running(WebhookNotifier(outbox, settings, LOOPBACK, poll_interval_s=0.02)) as notifier:
            wait_for(lambda: outbox.settled(), "the row delivered after a timeout")
        (row,) = outbox.rows()
        assert row.delivered and outbox.delivered_calls[row.notification.id] == 1
        assert row.errors and "no answer within 1 s" in row.errors[0]
        answers = [h["answer"] for h in receiver.hits]
        assert answers[0] == "hang" and answers[-1] == 200
        assert {h["headers"]["X-VAD-Delivery"] for h in receiver.hits} == {str(row.notification.id)}
        assert notifier.counts()["delivered"] == 1 and notifier.counts()["failed"] == len(row.errors)


def test_redirects_are_never_followed() -> None:
    with Receiver() as elsewhere, Receiver(
        lambda n, path: ("redirect", "http://169.254.169.254/latest/meta-data/") if path == "/metadata"
        else ("redirect", elsewhere.url("/allowed"))
    ) as receiver:
        settings = notify_settings(webhook_urls=f"{receiver.url('/metadata')},{receiver.url('/local')}",
                                   webhook_max_attempts=2)
        outbox = MemoryOutbox()
        outbox.enqueue("e1", ChangeKind.START, payload_json(change(ChangeKind.START, "e1")), receivers(settings))
        with running(WebhookNotifier(outbox, settings, LOOPBACK, poll_interval_s=0.02)) as notifier:
            wait_for(lambda: outbox.settled(), "both rows given up")
        rows = outbox.rows()
        assert all(r.given_up and not r.delivered and len(r.errors) == 2 for r in rows)
        assert all("redirect" in e and "not followed" in e for r in rows for e in r.errors)
        assert "169.254.169.254" in rows[0].errors[0]
        assert elsewhere.hits == []  # even an allowed redirect target is never contacted
        assert len(receiver.hits) == 4
        assert notifier.counts() == {"delivered": 0, "failed": 4, "given_up": 2}


def test_url_on_a_refused_network_is_never_contacted(caplog_debug: pytest.LogCaptureFixture) -> None:
    with Receiver() as receiver:
        # Credentials in the URL, and no allowed networks: loopback is refused.
        url = f"http://hookuser:url-pw-77@127.0.0.1:{receiver.port}/hook?token=tok-99"
        settings = notify_settings(webhook_urls=f"{url},ftp://127.0.0.1/x", webhook_max_attempts=3)
        outbox = MemoryOutbox()
        outbox.enqueue("e1", ChangeKind.START, payload_json(change(ChangeKind.START, "e1")), receivers(settings))
        with running(WebhookNotifier(outbox, settings, SourceSettings(), poll_interval_s=0.02)) as notifier:
            wait_for(lambda: outbox.settled(), "the rows given up")
        assert receiver.hits == []
        rows = outbox.rows()
        assert all(r.given_up and len(r.errors) == 3 for r in rows)
        assert all(e.startswith("refused, not contacted: ") for r in rows for e in r.errors)
        assert "loopback address 127.0.0.1" in rows[0].errors[0]
        assert "scheme 'ftp' is not allowed" in rows[1].errors[0]
        refused_logs = [r for r in caplog_debug.records if "refused" in r.getMessage() and r.levelno >= logging.ERROR]
        assert len(refused_logs) == 2  # once per URL, at start-up
        assert notifier.counts() == {"delivered": 0, "failed": 6, "given_up": 2}
    assert_no_secret(caplog_debug, outbox, SECRET, "url-pw-77", "tok-99")


def test_given_up_after_max_attempts_and_kept() -> None:
    with Receiver(lambda n, path: 503) as receiver:
        settings = notify_settings(webhook_urls=receiver.url(), webhook_max_attempts=3)
        outbox = MemoryOutbox()
        outbox.enqueue("e1", ChangeKind.END, payload_json(change(ChangeKind.END, "e1", ended=True)),
                       receivers(settings))
        with running(WebhookNotifier(outbox, settings, LOOPBACK, poll_interval_s=0.02)) as notifier:
            wait_for(lambda: outbox.settled(), "the row given up")
        (row,) = outbox.rows()
        assert row.given_up and not row.delivered and row.notification.attempts == 3
        assert row.errors == ["HTTP 503"] * 3 and outbox.depth() == 0
        assert len(receiver.hits) == 3
        assert notifier.counts() == {"delivered": 0, "failed": 3, "given_up": 1}


# --- MQTT ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """Mosquitto on 127.0.0.1 with a password file and persistence (sessions and retained messages
    survive `restart()`)."""

    def __init__(self, folder: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.process: subprocess.Popen[bytes] | None = None
        passwords = folder / "passwd"
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), MQTT_USER, MQTT_PASSWORD], check=True,
                       timeout=30, capture_output=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            f"user {getpass.getuser()}\n"  # as root: stay root, so the files in tmp stay readable
            f"log_dest file {folder}/mosquitto.log\n"
        )
        if tls:  # a second listener, mqtts, with a certificate for 127.0.0.1 (password file shared)
            ca, cert, key = tls
            with self.conf.open("a") as conf:
                conf.write(f"listener {self.tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        while True:
            assert self.process.poll() is None, (self.folder / "mosquitto.log").read_text(errors="replace")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise AssertionError("mosquitto did not start listening")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


def missing(why: str) -> None:
    """A broker the tests need: absent on a user's machine, skip; in CI, fail (it must be installed)."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        missing("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    running_broker = Broker(tmp_path)
    running_broker.start()
    try:
        yield running_broker
    finally:
        running_broker.stop()


class Subscriber:
    """A paho client recording every message of `topics`; a persistent session (QoS 1), so messages
    published while it reconnects after a broker restart are still delivered to it."""

    def __init__(self, broker: Broker, topics: tuple[str, ...] = ("vad/#", "homeassistant/#"),
                 persistent: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.topics = topics
        client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=not persistent)
        self.client.username_pw_set(MQTT_USER, MQTT_PASSWORD)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", broker.port)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, "the test subscriber's SUBACK")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, _retained in self.messages if t == topic]

    def retained(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, retained in self.messages if t == topic and retained]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_settings(broker: Broker, **overrides: Any) -> NotifySettings:
    values: dict[str, Any] = {"mqtt_url": f"mqtt://127.0.0.1:{broker.port}", "mqtt_username": MQTT_USER,
                              "mqtt_password": SecretStr(MQTT_PASSWORD)}
    values.update(overrides)
    return notify_settings(**values)


def mqtt_notifier(outbox: MemoryOutbox, settings: NotifySettings) -> MqttNotifier:
    return MqttNotifier(outbox, settings, poll_interval_s=0.02, reconnect_min_s=0.1, reconnect_max_s=1.0)


def test_mqtt_events_retained_state_and_home_assistant_discovery(
    broker: Broker, caplog_debug: pytest.LogCaptureFixture,
) -> None:
    settings = mqtt_settings(broker, mqtt_home_assistant=True)
    outbox = MemoryOutbox()
    stream = "yard/1+#"  # must not add levels or wildcards to any topic
    subscriber = Subscriber(broker)
    try:
        with running(mqtt_notifier(outbox, settings)) as notifier:
            changes = enqueue_event(outbox, settings, stream_id=stream)
            enqueue_event(outbox, settings, stream_id=stream, started=1_714_564_900.0)  # a second event
            wait_for(lambda: outbox.settled("mqtt"), "every MQTT row delivered")
            wait_for(lambda: len(subscriber.on("vad/events")) == 6, "six events on vad/events")
            assert notifier.counts() == {"delivered": 6, "failed": 0, "given_up": 0}
            assert all(outbox.delivered_calls[r.notification.id] == 1 for r in outbox.rows())
        events = [json.loads(p) for p in subscriber.on("vad/events")]
        assert [e["type"] for e in events] == ["start", "update", "end"] * 2
        assert events[0] == json.loads(payload_json(changes[0]))
        wait_for(lambda: subscriber.on("vad/status")[-1:] == [b"offline"], "offline on stop")
        assert subscriber.on("vad/yard_1__/anomaly") == [b"ON", b"OFF", b"ON", b"OFF"]
        discovery = subscriber.on("homeassistant/binary_sensor/vad_yard_1__/config")
        assert len(discovery) == 1  # once per stream (per connection)
        config = json.loads(discovery[0])
        assert config["state_topic"] == "vad/yard_1__/anomaly" and config["device_class"] == "problem"
        assert (config["payload_on"], config["payload_off"], config["unique_id"]) == ("ON", "OFF", "vad_yard_1__")
        assert config["name"] == "Front door anomaly"
        assert not any("+" in t or "#" in t for t, _p, _r in subscriber.messages)
    finally:
        subscriber.close()
    # A newcomer gets the retained state, the discovery config and the status.
    late = Subscriber(broker)
    try:
        wait_for(lambda: late.retained("vad/yard_1__/anomaly") == [b"OFF"], "the retained OFF")
        wait_for(lambda: len(late.retained("homeassistant/binary_sensor/vad_yard_1__/config")) == 1,
                 "the retained discovery config")
        wait_for(lambda: late.retained("vad/status") == [b"offline"], "the retained status")
    finally:
        late.close()
    assert_no_secret(caplog_debug, outbox, MQTT_PASSWORD)


def test_mqtt_late_end_of_an_older_event_does_not_turn_the_state_off(broker: Broker) -> None:
    settings = mqtt_settings(broker)
    outbox = MemoryOutbox()
    subscriber = Subscriber(broker)
    try:
        with running(mqtt_notifier(outbox, settings)):
            newer = change(ChangeKind.START, stream_id="cam", started=2_000.0)
            older_end = change(ChangeKind.END, stream_id="cam", started=1_000.0, ended=True)
            for item in (newer, older_end):  # delivered in this order: the older event's end arrives late
                outbox.enqueue(item.event.id, item.kind, payload_json(item), receivers(settings))
            wait_for(lambda: outbox.settled("mqtt"), "both rows delivered")
            wait_for(lambda: len(subscriber.on("vad/events")) == 2, "both events published")
        assert subscriber.on("vad/cam/anomaly") == [b"ON"]
    finally:
        subscriber.close()


def test_mqtt_broker_restart_reconnects_and_delivers(broker: Broker, caplog_debug: pytest.LogCaptureFixture) -> None:
    settings = mqtt_settings(broker)
    outbox = MemoryOutbox()
    subscriber = Subscriber(broker, topics=("vad/events",), persistent=True)
    try:
        with running(mqtt_notifier(outbox, settings)) as notifier:
            first = change(ChangeKind.START, "first")
            outbox.enqueue("first", ChangeKind.START, payload_json(first), receivers(settings))
            wait_for(lambda: outbox.settled("mqtt"), "the first row delivered")

            broker.stop()
            wait_for(lambda: not notifier.connected, "the notifier noticing the broker is gone")
            second = change(ChangeKind.END, "first", ended=True)
            outbox.enqueue("first", ChangeKind.END, payload_json(second), receivers(settings))
            wait_for(lambda: any(r.errors for r in outbox.rows()), "a failed attempt while the broker is down")
            broker.start()

            wait_for(lambda: outbox.settled("mqtt"), "the second row delivered after the restart")
            wait_for(lambda: len(subscriber.on("vad/events")) == 2, "the subscriber getting both events")
            rows = outbox.rows()
            assert all(r.delivered and outbox.delivered_calls[r.notification.id] == 1 for r in rows)
            assert rows[1].errors and all("not connected" in e for e in rows[1].errors)
            assert notifier.connected and notifier.counts()["delivered"] == 2
        assert [json.loads(p)["type"] for p in subscriber.on("vad/events")] == ["start", "end"]
    finally:
        subscriber.close()
    assert_no_secret(caplog_debug, outbox, MQTT_PASSWORD)


def test_mqtt_wrong_password_fails_with_a_clear_reason(broker: Broker, caplog_debug: pytest.LogCaptureFixture) -> None:
    wrong = "not-the-pw-5513"
    settings = mqtt_settings(broker, mqtt_password=SecretStr(wrong), webhook_max_attempts=2)
    outbox = MemoryOutbox()
    with running(mqtt_notifier(outbox, settings)) as notifier:
        wait_for(lambda: "refused the connection" in (notifier.last_error or ""), "the broker's refusal")
        outbox.enqueue("e1", ChangeKind.START, payload_json(change(ChangeKind.START, "e1")), receivers(settings))
        wait_for(lambda: outbox.settled("mqtt"), "the row given up")
        assert not notifier.connected
    (row,) = outbox.rows()
    assert row.given_up and len(row.errors) == 2
    assert "broker not connected: broker refused the connection: Not authorized" in row.errors[0]
    assert notifier.counts() == {"delivered": 0, "failed": 2, "given_up": 1}
    assert any("refused the connection" in r.getMessage() for r in caplog_debug.records)
    assert_no_secret(caplog_debug, outbox, wrong, MQTT_PASSWORD)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for IP 127.0.0.1 (openssl command line)."""
    ca_key, ca, key, csr, cert, ext = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                          "server.pem", "server.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=vad test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def test_mqtts_with_a_ca_file_and_refused_without_it(tmp_path: Path, caplog_debug: pytest.LogCaptureFixture) -> None:
    if shutil.which("mosquitto") is None or shutil.which("openssl") is None:
        missing("mosquitto or openssl is not installed")
    ca, cert, key = make_certificates(tmp_path)
    tls_broker = Broker(tmp_path, tls=(ca, cert, key))
    tls_broker.start()
    try:
        subscriber = Subscriber(tls_broker, topics=("vad/events",))  # plain listener
        try:
            url = f"mqtts://127.0.0.1:{tls_broker.tls_port}"
            settings = mqtt_settings(tls_broker, mqtt_url=url, mqtt_tls_ca=ca)
            outbox = MemoryOutbox()
            with running(mqtt_notifier(outbox, settings)):
                outbox.enqueue("e1", ChangeKind.START, payload_json(change(ChangeKind.START, "e1")),
                               receivers(settings))
                wait_for(lambda: outbox.settled("mqtt"), "the row delivered over TLS")
            assert outbox.rows()[0].delivered
            wait_for(lambda: len(subscriber.on("vad/events")) == 1, "the event through the TLS listener")
        finally:
            subscriber.close()
        # The system's CAs do not know the test CA: the certificate is refused, nothing published.
        untrusted = mqtt_settings(tls_broker, mqtt_url=url)
        with running(mqtt_notifier(MemoryOutbox(), untrusted)) as notifier:
            wait_for(lambda: "certificate" in (notifier.last_error or "").lower(), "a certificate error")
            assert not notifier.connected
    finally:
        tls_broker.stop()
    assert_no_secret(caplog_debug, outbox, MQTT_PASSWORD)
