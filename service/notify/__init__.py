"""Delivery of event changes to the outside world, fed from the durable outbox (service.eventtypes.Outbox).

    payload   the JSON of an event change (webhooks and MQTT share it) and the receiver ids to enqueue
    webhooks  WebhookNotifier: HTTP POST with an HMAC signature, retries with backoff, URL guard
    mqtt      MqttNotifier: PREFIX/events, retained PREFIX/<stream>/anomaly ON/OFF, Home Assistant discovery

The engine enqueues one outbox row per receiver id (`receivers(settings)`); each notifier polls the
rows of its receivers, and marks them delivered, failed (retried later) or given up (kept).
"""

from __future__ import annotations

from .payload import event_payload, payload_json, receivers, webhook_receiver_id, webhook_urls

__all__ = ["event_payload", "payload_json", "receivers", "webhook_receiver_id", "webhook_urls"]
