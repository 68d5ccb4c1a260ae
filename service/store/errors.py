"""The store's errors, each with a message meant for people (credentials never included). The API layer
maps them to responses: EventNotFound -> 404, InvalidQuery -> 422, StoreUnavailable -> 503."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the event store raises on purpose."""


class EventNotFound(StoreError):
    def __init__(self, event_id: str) -> None:
        super().__init__(f"no event with id {event_id!r}")
        self.event_id = event_id


class NotificationNotFound(StoreError):
    def __init__(self, notification_id: int) -> None:
        super().__init__(f"no outbox notification with id {notification_id}")
        self.notification_id = notification_id


class InvalidQuery(StoreError, ValueError):
    """A bad filter, limit or cursor in a read (the caller's input)."""


class InvalidDatabaseUrl(StoreError, ValueError):
    """The database URL has a scheme the store does not support, or cannot be parsed (shown redacted)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (or timed out); the reason is redacted."""


class StoreClosed(StoreError):
    def __init__(self) -> None:
        super().__init__("the event store is closed")
