"""MemoryOutbox: the `service.eventtypes.Outbox` protocol in memory, for the notifier tests.

A test double of the database-backed outbox (service/store/, built separately): same contract
(one row per receiver, `due` oldest first by id among rows whose next attempt is due, `delivered`
final, `failed(..., None)` gives up and keeps the row), no durability. It also records every call so
tests can check that each row was marked delivered exactly once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

from service.eventtypes import ChangeKind, Notification


@dataclasses.dataclass
class Row:
    notification: Notification
    delivered: bool = False
    given_up: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)


class MemoryOutbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, Row] = {}
        self._next_id = 1
        self.delivered_calls: Counter[int] = Counter()  # row id -> times `delivered` was called

    # --- the Outbox protocol -------------------------------------------------------------------

    def enqueue(self, event_id: str, kind: ChangeKind, payload: str, receivers: list[str]) -> None:
        with self._lock:
            for receiver in receivers:
                row_id = self._next_id
                self._next_id += 1
                self._rows[row_id] = Row(Notification(row_id, receiver, event_id, kind, payload))

    def due(self, receiver_prefix: str, now: float, limit: int) -> list[Notification]:
        with self._lock:
            found = [
                row.notification for row_id, row in sorted(self._rows.items())
                if not row.delivered and not row.given_up
                and row.notification.receiver.startswith(receiver_prefix)
                and row.notification.next_attempt_at <= now
            ]
            return found[:limit]

    def delivered(self, notification_id: int) -> None:
        with self._lock:
            self.delivered_calls[notification_id] += 1
            self._rows[notification_id].delivered = True

    def failed(self, notification_id: int, error: str, next_attempt_at: float | None) -> None:
        with self._lock:
            row = self._rows[notification_id]
            row.errors.append(error)
            row.notification = dataclasses.replace(
                row.notification, attempts=row.notification.attempts + 1, last_error=error,
                next_attempt_at=row.notification.next_attempt_at if next_attempt_at is None else next_attempt_at,
            )
            if next_attempt_at is None:
                row.given_up = True

    def depth(self) -> int:
        with self._lock:
            return sum(1 for row in self._rows.values() if not row.delivered and not row.given_up)

    # --- for the tests --------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        with self._lock:
            return [dataclasses.replace(row, errors=list(row.errors)) for _, row in sorted(self._rows.items())]

    def settled(self, receiver_prefix: str = "") -> bool:
        """Every row of these receivers delivered or given up."""
        return all(r.delivered or r.given_up for r in self.rows()
                   if r.notification.receiver.startswith(receiver_prefix))
