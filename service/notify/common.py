"""What both notifiers share: the retry schedule, the outcome counters and rate-limited warnings."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from ..eventtypes import Notification, Outbox
from ..settings import NotifySettings

# (receiver kind, outcome) -> None; the metrics layer passes one to count in Prometheus.
OutcomeCallback = Callable[[str, str], None]
OUTCOMES = ("delivered", "failed", "given_up")
JITTER = 0.1  # +- this fraction of each delay, so many failed rows do not retry in lockstep


def retry_delay(settings: NotifySettings, attempts: int, rng: random.Random | None = None) -> float:
    """Delay after failed attempt number `attempts` (1, 2, ...): initial * 2^(n-1), capped, with jitter."""
    base = min(settings.webhook_backoff_max_s, settings.webhook_backoff_initial_s * 2.0 ** max(0, attempts - 1))
    jitter = (rng or random).uniform(-JITTER, JITTER)
    return max(0.0, min(settings.webhook_backoff_max_s, base * (1.0 + jitter)))


def fail_attempt(outbox: Outbox, settings: NotifySettings, row: Notification, error: str, give_up: bool,
                 clock: Callable[[], float], rng: random.Random | None = None) -> tuple[int, bool]:
    """Record a failed attempt of `row` in the outbox: due again after retry_delay, or given up (asked
    for, or after webhook_max_attempts). -> (attempts so far, given up). Raises what the outbox raises."""
    attempts = row.attempts + 1
    give_up = give_up or attempts >= settings.webhook_max_attempts
    outbox.failed(row.id, error, None if give_up else clock() + retry_delay(settings, attempts, rng))
    return attempts, give_up


class OutcomeCounters:
    """Delivered / failed / given-up attempts of one receiver kind; read by the metrics layer.

    `failed` counts failed attempts (a retried one too); `given_up` counts notifications abandoned
    after their last attempt (also counted in `failed`).
    """

    def __init__(self, kind: str, on_outcome: OutcomeCallback | None = None, logger: logging.Logger | None = None):
        self.kind = kind
        self.delivered = 0
        self.failed = 0
        self.given_up = 0
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self._log = logger or logging.getLogger(__name__)

    def count(self, outcome: str) -> None:
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)
        if self._on_outcome is not None:
            try:
                self._on_outcome(self.kind, outcome)
            except Exception:  # noqa: BLE001 - metrics never stop a delivery
                self._log.exception("notification metrics callback failed")

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"delivered": self.delivered, "failed": self.failed, "given_up": self.given_up}


class RateLimitedLog:
    """One warning per key per `every_s`: a dead receiver must not flood the log."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0, max_keys: int = 1000) -> None:
        self._log = logger
        self._every = every_s
        self._last: dict[str, float] = {}
        self._max_keys = max_keys  # bounded: beyond it the table starts over (some warnings repeat early)

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self._every:
            return
        if len(self._last) >= self._max_keys:
            self._last.clear()
        self._last[key] = now
        self._log.warning(message, *args)
