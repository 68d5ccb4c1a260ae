"""Webhooks: every event change POSTed as JSON to each configured URL, from the outbox, at least once
per attempt and exactly once per receiver id (the outbox marks a row delivered once; the
X-VAD-Delivery header carries the row id, the same on every retry, so receivers drop repeats).

One thread polls `outbox.due("webhook:", ...)` and delivers rows one at a time:

- headers: Content-Type application/json, X-VAD-Event (start|update|end), X-VAD-Delivery (row id),
  X-VAD-Signature "sha256=<hex HMAC-SHA256(secret, body)>" when a secret is set;
- 2xx: delivered. Any other status, a timeout or a connection error: failed, retried after
  initial * 2^(n-1) s (capped, +-10 % jitter) until webhook_max_attempts, then given up (kept);
- redirects are never followed (a 3xx is a failure): following one would let a receiver send the
  service to an address the guard below never checked (169.254.169.254, say);
- the URL passes the camera-URL guard (service.netguard, VAD_ALLOWED_SOURCE_NETWORKS) before every
  attempt: the host is resolved with a timeout and every address checked; a refused URL is never
  contacted (the row fails with the reason). The request then goes to the checked address (the
  Host header and TLS SNI keep the name), so a second DNS answer cannot redirect it;
- environment proxies are ignored (trust_env=False): a proxy would connect where the guard never looked.

Logs and stored errors never hold the secret or a URL's credentials (service.netguard.redact_url).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..eventtypes import Notification, Outbox
from ..netguard import AnyAddress, CheckedSource, SourceRefused, check_source_url, redact_text, redact_url
from ..settings import NotifySettings, SourceSettings
from .common import OutcomeCallback, OutcomeCounters, RateLimitedLog, fail_attempt
from .payload import WEBHOOK_PREFIX, webhook_receiver_id, webhook_urls

log = logging.getLogger("vad.notify.webhooks")

WEBHOOK_SCHEMES = ("http", "https")
USER_AGENT = "desdnet-vad-webhook"
MAX_ERROR_CHARS = 300  # stored in the outbox row: enough to say why, never a whole response

Resolver = Callable[[str, int, float], Sequence[AnyAddress]]


def signature(secret: str, body: bytes) -> str:
    """The X-VAD-Signature value: 'sha256=' + hex HMAC-SHA256(secret, body)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    """Delivers the outbox's "webhook:*" rows. `start()`, then `stop()`; `counts()` for the metrics.

    `on_outcome(kind, outcome)` (optional) is called with ("webhook", "delivered" | "failed" |
    "given_up") for each attempt's outcome; `resolver` replaces the system DNS lookup (tests).
    """

    kind = "webhook"

    def __init__(
        self,
        outbox: Outbox,
        settings: NotifySettings,
        source_settings: SourceSettings | None = None,
        *,
        on_outcome: OutcomeCallback | None = None,
        poll_interval_s: float = 0.5,
        batch_size: int = 50,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if poll_interval_s <= 0 or batch_size < 1:
            raise ValueError("poll_interval_s must be > 0 and batch_size >= 1")
        self.outbox = outbox
        self.settings = settings
        self.source_settings = source_settings or SourceSettings.model_construct()
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self._resolver = resolver
        self._clock = clock
        self._urls = {webhook_receiver_id(url): url for url in webhook_urls(settings)}
        secret = settings.webhook_secret
        self._secret = secret.get_secret_value() if secret is not None and secret.get_secret_value() else None
        self.counters = OutcomeCounters(self.kind, on_outcome, log)
        self.last_errors: dict[str, str] = {}  # receiver id -> last failure (redacted); one per URL
        self._warn = RateLimitedLog(log)
        self._rng = random.Random()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    def __repr__(self) -> str:
        return f"WebhookNotifier(receivers={[redact_url(u) for u in self._urls.values()]})"

    @property
    def receivers(self) -> dict[str, str]:
        """Receiver id -> URL with its credentials redacted."""
        return {rid: redact_url(url) for rid, url in self._urls.items()}

    def start(self) -> WebhookNotifier:
        if self._thread is not None:
            raise RuntimeError("webhook notifier already started")
        self._thread = threading.Thread(target=self._run, name="vad-webhooks", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """Look at the outbox now (the engine may call it after an enqueue; polling covers it anyway)."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; True when it ended within `timeout`. A POST in flight ends at its own
        timeout (webhook_timeout_s) at the latest; its row is then retried on the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counts(self) -> dict[str, int]:
        """{"delivered": n, "failed": n, "given_up": n} since start (attempts, see OutcomeCounters)."""
        return self.counters.counts()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        client = httpx.Client(
            timeout=httpx.Timeout(self.settings.webhook_timeout_s),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": USER_AGENT},
        )
        try:
            self._check_all()
            while not self._stop.is_set():
                try:
                    rows = self.outbox.due(WEBHOOK_PREFIX, self._clock(), self.batch_size)
                except Exception as exc:  # noqa: BLE001 - a database hiccup: try again at the next poll
                    self._warn.warning("outbox", "webhooks: reading the outbox failed: %s", exc)
                    rows = []
                for row in rows:
                    if self._stop.is_set():
                        return
                    self._deliver(client, row)
                if len(rows) < self.batch_size:  # a full batch: more are due, go on at once
                    self._wake.wait(self.poll_interval_s)
                    self._wake.clear()
        except Exception as exc:  # noqa: BLE001 - last resort: never die silently
            log.error("webhook thread crashed: %s", self._redact(str(exc)))
        finally:
            client.close()

    def _check_all(self) -> None:
        """A refused URL is said once, at start-up (on this thread: DNS never holds up start())."""
        for url in self._urls.values():
            if self._stop.is_set():
                return
            try:
                self._check(url)
            except SourceRefused as exc:
                log.error("webhook %s refused: %s; its notifications will fail", redact_url(url),
                          redact_text(str(exc), url))

    def _check(self, url: str) -> CheckedSource:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in WEBHOOK_SCHEMES:
            raise SourceRefused(f"scheme {scheme or 'none'!r} is not allowed for webhooks (http, https)")
        return check_source_url(
            url, self.source_settings.allowed_networks,
            resolve_timeout=self.source_settings.resolve_timeout_s, resolver=self._resolver,
        )

    def _deliver(self, client: httpx.Client, row: Notification) -> None:
        url = self._urls.get(row.receiver)
        if url is None:
            # Enqueued for a URL no longer configured: nobody to deliver to, ever.
            self._record(row, "receiver no longer configured (its URL left VAD_WEBHOOK_URLS)", give_up=True)
            return
        try:
            checked = self._check(url)
        except SourceRefused as exc:
            self._record(row, "refused, not contacted: " + redact_text(str(exc), url))
            return
        target, extensions = _pinned(checked)
        body = row.payload.encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "X-VAD-Event": row.kind.value,
            "X-VAD-Delivery": str(row.id),
        }
        host = urlsplit(url).netloc.rpartition("@")[2]
        if host:
            headers["Host"] = host
        if self._secret is not None:
            headers["X-VAD-Signature"] = signature(self._secret, body)
        error: str | None
        try:
            # stream(): the status line and headers are all we need; the body is never read.
            with client.stream("POST", target, content=body, headers=headers, extensions=extensions) as response:
                status = response.status_code
                location = response.headers.get("location", "")
        except httpx.TimeoutException as exc:
            error = f"no answer within {self.settings.webhook_timeout_s:g} s ({type(exc).__name__})"
        except httpx.HTTPError as exc:
            error = f"connection failed: {type(exc).__name__}: {redact_text(str(exc), url, target)}"
        else:
            if 200 <= status < 300:
                self._delivered(row)
                return
            if 300 <= status < 400:
                error = (f"HTTP {status} redirect to {redact_url(location) or '(no Location)'} not followed "
                         "(webhooks never follow redirects; configure the final URL)")
            else:
                error = f"HTTP {status}"
        self._record(row, error)

    def _delivered(self, row: Notification) -> None:
        try:
            self.outbox.delivered(row.id)
        except Exception as exc:  # noqa: BLE001 - the row stays due: delivered again, X-VAD-Delivery dedupes
            self._warn.warning("outbox", "webhooks: marking notification %d delivered failed: %s", row.id, exc)
            return
        self.last_errors.pop(row.receiver, None)
        self.counters.count("delivered")

    def _record(self, row: Notification, error: str, give_up: bool = False) -> None:
        error = self._redact(error)[:MAX_ERROR_CHARS]
        try:
            attempts, give_up = fail_attempt(self.outbox, self.settings, row, error, give_up, self._clock, self._rng)
        except Exception as exc:  # noqa: BLE001 - the row stays due and is tried again
            self._warn.warning("outbox", "webhooks: recording a failed notification failed: %s", exc)
            return
        if len(self.last_errors) < 10000 or row.receiver in self.last_errors:  # bounded: one per receiver
            self.last_errors[row.receiver] = error
        self.counters.count("failed")
        shown = self.receivers.get(row.receiver, row.receiver)
        if give_up:
            self.counters.count("given_up")
            log.warning("webhook %s: gave up on notification %d (event %s, %s) after %d attempts: %s",
                        shown, row.id, row.event_id, row.kind.value, attempts, error)
        else:
            self._warn.warning(row.receiver, "webhook %s: delivery failed (attempt %d of %d, retrying): %s",
                               shown, attempts, self.settings.webhook_max_attempts, error)

    def _redact(self, text: str) -> str:
        text = redact_text(text, *self._urls.values())
        if self._secret:
            text = text.replace(self._secret, "***")
        return text


def _pinned(checked: CheckedSource) -> tuple[str, dict[str, Any]]:
    """The URL with its host replaced by the checked address, and the TLS server name to keep.

    The Host header (set by the caller) and SNI carry the name, so virtual hosts and certificate
    checks still see it while the connection goes where the guard looked.
    """
    parts = urlsplit(checked.url)
    address = checked.addresses[0]
    host = f"[{address}]" if address.version == 6 else str(address)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"{host}:{checked.port}"
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    extensions: dict[str, Any] = {}
    if checked.scheme == "https":
        extensions["sni_hostname"] = checked.host
    return target, extensions
