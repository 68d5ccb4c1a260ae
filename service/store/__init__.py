"""Event storage: anomaly events and the notification outbox (SQLite by default, PostgreSQL by URL).

    store = EventStore.open(settings.events.database_url, settings.scenes.data_dir,
                            write_queue=settings.events.event_write_queue)
    store.submit(change, [(receiver, payload_json), ...])   # inference thread: never blocks
    store.get(id) / store.list(EventQuery(...)) / store.label(...) / store.delete(id) / store.stats()
    worker = RetentionWorker(store, max_age_s=days * 86400, max_bytes=...).start()
    ...
    worker.stop(); store.close()

The schema is managed by the Alembic migrations in migrations/, applied by `EventStore.open`.
"""

from .errors import (
    EventNotFound,
    InvalidDatabaseUrl,
    InvalidQuery,
    NotificationNotFound,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from .retention import RetentionWorker
from .store import EventStore

__all__ = [
    "EventNotFound",
    "EventStore",
    "InvalidDatabaseUrl",
    "InvalidQuery",
    "NotificationNotFound",
    "RetentionWorker",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
]
