"""RetentionWorker: a background thread that calls EventStore.enforce_retention every `interval_s`."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .errors import StoreError

log = logging.getLogger("vad.store")


class RetentionWorker:
    """Runs retention once at start, then every `interval_s` seconds, until stop()."""

    def __init__(self, store: Any, *, max_age_s: float, max_bytes: int, interval_s: float = 3600.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.store = store
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.interval_s = interval_s
        self.runs = 0
        self.errors = 0
        self.last_result: dict[str, int] | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vad-event-retention", daemon=True)

    @classmethod
    def from_settings(cls, store: Any, settings: Any, *, interval_s: float = 3600.0) -> RetentionWorker:
        return cls(store, max_age_s=settings.events.event_retention_days * 86_400,
                   max_bytes=settings.events.event_retention_bytes, interval_s=interval_s)

    def start(self) -> RetentionWorker:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def run_once(self) -> dict[str, int] | None:
        try:
            self.last_result = self.store.enforce_retention(self.max_age_s, self.max_bytes)
            self.last_error = None
        except StoreError as exc:  # e.g. the database is down: try again next time
            self.errors += 1
            if self.last_error is None:  # once per failure streak
                log.warning("event retention skipped: %s", exc)
            self.last_error = str(exc)
        finally:
            self.runs += 1
        return self.last_result

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # keep the thread alive: a bug here must not stop retention for good
                self.errors += 1
                log.exception("event retention failed")
            self._stop.wait(self.interval_s)
