"""Events through a real server: a run of anomalous frames becomes a stored event with a snapshot and a
clip; the event API (list, filters, cursor, get, label, delete, media with ranges), the live feed, a
restart."""

from __future__ import annotations

import io
import json
import time

import av
import cv2
import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from tests.support.serving import encode, metric_value

JPEG = {"content-type": "image/jpeg"}
BASE = time.time() - 3600
EVENTS = {"min_frames": 3, "release_frames": 3, "cooldown_seconds": 0, "pre_roll_seconds": 1}


def push(client: httpx.Client, sid: str, frames, start: int = 0) -> list[dict]:  # noqa: ANN001
    out = []
    for i, frame in enumerate(frames):
        # Capture times 40 ms apart (25 fps): the event's times and the clip's frame rate follow them.
        # Recent ones: events older than VAD_EVENT_RETENTION_DAYS are deleted at start-up.
        stamp = BASE + (start + i) * 0.04
        r = client.post(f"/v1/streams/{sid}/frames", content=encode(frame), headers=JPEG,
                        params={"timestamp": stamp})
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def one_event(client: httpx.Client, sid: str, video) -> None:  # noqa: ANN001
    """Normal, then abnormal (threshold -100: every frame alarms), then normal again: one event."""
    push(client, sid, video[:10])
    client.patch(f"/v1/streams/{sid}", json={"threshold": -100})
    push(client, sid, video[10:20], start=10)
    client.patch(f"/v1/streams/{sid}", json={"threshold": 100})
    push(client, sid, video[20:28], start=20)


def test_a_run_of_anomalous_frames_is_one_stored_event_with_media(start_server, service_settings, video) -> None:
    settings = service_settings(event_release_frames=3)
    server = start_server(settings)
    with server.client() as client, connect(server.ws_url("/v1/events")) as feed:
        sid = client.post("/v1/streams", json={"name": "lobby", "threshold": 100, "events": EVENTS}).json()["id"]
        assert client.get(f"/v1/streams/{sid}").json()["events"]["min_frames"] == 3
        one_event(client, sid, video)
        messages = [json.loads(feed.recv(timeout=10)) for _ in range(2)]
        assert [m["type"] for m in messages] == ["start", "end"]
        event_id = messages[0]["event"]["id"]
        assert messages[1]["event"]["id"] == event_id and messages[1]["event"]["end_reason"] == "released"

        listed = client.get("/v1/events").json()
        assert listed["count"] == 1 and listed["next_cursor"] is None
        event = listed["data"][0]
        assert event["id"] == event_id and event["stream_name"] == "lobby" and not event["open"]
        assert event["start_frame"] == 10 and event["end_frame"] == 19
        assert event["duration_s"] == 0.36 and event["frames_above"] == 10
        assert event["box"] is not None and event["media_error"] is None

        snapshot = client.get(event["snapshot_url"])
        assert snapshot.status_code == 200 and snapshot.headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(snapshot.content, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == video[0].shape
        clean = cv2.imdecode(np.frombuffer(client.get(event["clean_snapshot_url"]).content, np.uint8),
                             cv2.IMREAD_COLOR)
        assert np.abs(clean.astype(int) - image.astype(int)).mean() > 1  # the heatmap is over one of them
        clip = client.get(event["clip_url"])
        assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4"
        with av.open(io.BytesIO(clip.content)) as container:
            frames = list(container.decode(video=0))
        assert len(frames) >= 10 and frames[0].width == video.shape[2] - video.shape[2] % 2
        part = client.get(event["clip_url"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100

        labelled = client.patch(f"/v1/events/{event_id}", json={"label": "false_alarm", "note": "a cat"}).json()
        assert labelled["label"] == "false_alarm" and labelled["note"] == "a cat"
        assert client.get("/v1/events", params={"label": "true_alarm"}).json()["count"] == 0
        assert client.get("/v1/events", params={"label": "false_alarm"}).json()["count"] == 1
        assert client.get(f"/v1/streams/{sid}/events").json()["count"] == 1

        for bad in ({"label": "maybe"}, {"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
                    {"limit": 0}, {"cursor": "garbage"}):
            r = client.get("/v1/events", params=bad)
            assert r.status_code == 422, (bad, r.text)
        assert client.patch(f"/v1/events/{event_id}", json={"label": "maybe"}).status_code == 422
        assert client.get("/v1/events/" + "0" * 32).status_code == 404
        metrics = server.metrics()
        assert metric_value(metrics, "vad_events_opened_total", {"stream": sid}) == 1
        assert metric_value(metrics, "vad_events_closed_total", {"stream": sid, "reason": "released"}) == 1

    # A restart: the event is still there, label included.
    server.server.should_exit = True
    server.thread.join(30)
    again = start_server(settings)
    with again.client() as client:
        event = client.get(f"/v1/events/{event_id}").json()
        assert event.get("label") == "false_alarm", event
        assert client.get(event["clip_url"]).status_code == 200
        deleted = client.delete(f"/v1/events/{event_id}")
        assert deleted.status_code == 200
        assert client.get(f"/v1/events/{event_id}").status_code == 404
        assert client.get(event["clip_url"]).status_code == 404


def test_an_open_event_ends_when_its_stream_is_deleted_and_pages_follow_the_cursor(start_server, video) -> None:
    server = start_server()
    with server.client() as client:
        sid = client.post("/v1/streams", json={"threshold": -100, "events": {**EVENTS, "max_seconds": 0.2}}).json()["id"]
        push(client, sid, video[:30])  # 26 anomalous frames, 0.2 s each at most: several events
        assert client.get(f"/v1/streams/{sid}").json()["open_event"] is not None
        open_id = client.get(f"/v1/streams/{sid}").json()["open_event"]
        client.delete(f"/v1/streams/{sid}")
        # An ended event is stored once its snapshot and clip are written (on the media thread).
        deadline = time.monotonic() + 20
        while client.get(f"/v1/events/{open_id}").json()["open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        seen, cursor = [], None
        while True:
            page = client.get("/v1/events", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        reasons = [e["end_reason"] for e in seen]
        assert reasons[0] == "stream_deleted" and set(reasons[1:]) == {"max_duration"}
        assert len({e["id"] for e in seen}) == len(seen) >= 4
        starts = [e["started_at"] for e in seen]
        assert starts == sorted(starts, reverse=True)


def test_webhooks_and_mqtt_get_every_change_once_across_a_restart(start_server, service_settings, video,
                                                                  tmp_path) -> None:
    import paho.mqtt.client as mqtt

    from tests.integration.test_notify import MQTT_PASSWORD, MQTT_USER, Broker, Receiver, wait_for

    broker = Broker(tmp_path)
    broker.start()
    messages: list[tuple[str, bytes, bool]] = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscriber.username_pw_set(MQTT_USER, MQTT_PASSWORD)
    subscriber.on_message = lambda client, userdata, m: messages.append((m.topic, m.payload, m.retain))
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.subscribe("vad/#", qos=1)
    subscriber.loop_start()
    # The receiver fails its first three deliveries; the service is restarted while they are failing.
    with Receiver(lambda n, path: 500 if n < 3 else 200) as receiver:
        settings = service_settings(
            webhook_urls=receiver.url(), webhook_secret="s3cret-hook", webhook_backoff_initial_s=0.2,
            webhook_backoff_max_s=0.5, allowed_source_networks="127.0.0.0/8",
            mqtt_url=f"mqtt://127.0.0.1:{broker.port}", mqtt_username=MQTT_USER, mqtt_password=MQTT_PASSWORD,
        )
        server = start_server(settings)
        with server.client() as client:
            sid = client.post("/v1/streams", json={"name": "gate", "threshold": 100, "events": EVENTS}).json()["id"]
            one_event(client, sid, video)
            wait_for(lambda: len(receiver.hits) >= 2, "two failed deliveries")
        server.server.should_exit = True
        server.thread.join(30)
        start_server(settings)  # the outbox is durable: the new process delivers what is left
        wait_for(lambda: len(receiver.accepted("/hook")) >= 2, "start and end delivered")
        time.sleep(1.0)  # anything delivered twice would arrive now
        accepted = receiver.accepted("/hook")
        kinds = sorted(json.loads(h["body"])["type"] for h in accepted)
        assert kinds == ["end", "start"]
        deliveries = [h["headers"]["X-VAD-Delivery"] for h in accepted]
        assert len(set(deliveries)) == 2
        assert all(h["headers"]["X-VAD-Signature"].startswith("sha256=") for h in accepted)
    wait_for(lambda: sum(t == "vad/events" for t, _, _ in messages) >= 2, "MQTT events")
    states = [p for t, p, _ in messages if t == f"vad/{sid}/anomaly"]
    assert states[-1] == b"OFF" and b"ON" in states
    assert sorted(json.loads(p)["type"] for t, p, _ in messages if t == "vad/events") == ["end", "start"]
    subscriber.loop_stop()
    subscriber.disconnect()
    broker.stop()


def test_labels_give_running_counts_and_a_suggested_threshold(start_server, video) -> None:
    server = start_server()
    with server.client() as client:
        sid = client.post("/v1/streams", json={"threshold": -100, "events": {**EVENTS, "max_seconds": 0.2}}).json()["id"]
        push(client, sid, video[:30])
        deadline = time.monotonic() + 20
        while sum(not e["open"] for e in client.get(f"/v1/streams/{sid}/events").json()["data"]) < 3 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        # Closed events only: an open one's peak may still rise.
        events = [e for e in client.get(f"/v1/streams/{sid}/events").json()["data"] if not e["open"]]
        by_peak = sorted(events, key=lambda e: e["peak_score"])
        true_alarm, false_alarms = by_peak[-1], by_peak[:-1]
        client.patch(f"/v1/events/{true_alarm['id']}", json={"label": "true_alarm"})
        for event in false_alarms:
            client.patch(f"/v1/events/{event['id']}", json={"label": "false_alarm"})
        advice = client.get(f"/v1/streams/{sid}/threshold", params={"target_per_hour": 0.01}).json()
        assert advice["true_alarms"] == 1 and advice["false_alarms"] == len(false_alarms)
        assert advice["threshold"] == -100 and advice["hours"] > 0
        assert advice["suggested"] == pytest.approx(max(e["peak_score"] for e in false_alarms) + 0.01, abs=1e-3)
        assert advice["true_alarms_kept"] == (1 if true_alarm["peak_score"] >= advice["suggested"] else 0)
        lenient = client.get(f"/v1/streams/{sid}/threshold", params={"target_per_hour": 1000}).json()
        assert lenient["suggested"] is None and "within the target" in lenient["explanation"]
        assert client.get("/v1/streams/nope/threshold").status_code == 404
        assert client.get(f"/v1/streams/{sid}/threshold", params={"target_per_hour": 0}).status_code == 422


def test_events_are_stored_without_media_when_the_media_cannot_be_written(start_server, service_settings,
                                                                          video) -> None:
    settings = service_settings()
    # A file where the media folder should be: writes fail as on a full or read-only disk.
    settings.scenes.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.scenes.data_dir / "media").write_text("in the way")
    server = start_server(settings)
    with server.client() as client:
        sid = client.post("/v1/streams", json={"threshold": 100, "events": EVENTS}).json()["id"]
        one_event(client, sid, video)
        deadline = time.monotonic() + 20
        while not client.get("/v1/events").json()["count"] or client.get("/v1/events").json()["data"][0]["open"]:
            assert time.monotonic() < deadline, "the event was not stored"
            time.sleep(0.05)
        event = client.get("/v1/events").json()["data"][0]
        assert event["end_reason"] == "released" and event["clip_url"] is None and event["snapshot_url"] is None
        assert "snapshot not written" in event["media_error"] and "clip not written" in event["media_error"]
        missing = client.get(f"/v1/events/{event['id']}/clip.mp4")
        assert missing.status_code == 404 and "clip not written" in missing.json()["detail"]
        assert metric_value(server.metrics(), "vad_event_media_failures_total") == 1
        # Scoring goes on.
        assert push(client, sid, video[28:30], start=28)[-1]["status"] == "scored"
