"""EventStore: anomaly events and the notification outbox in SQLite (default) or PostgreSQL.

Writes: `submit()` runs on the inference worker's thread and never touches the database. It appends the
change to a bounded in-memory queue: beyond `write_queue` the oldest waiting change is dropped and counted
in `dropped` (a batch being written at that moment, at most half the bound, is not). One writer thread
drains the queue in order, writing each event row (insert or update by id) and its outbox rows in one
transaction. While the database is unreachable the writer keeps the changes queued,
retries with exponential backoff, logs once when the outage starts and once when it ends, and writes
everything queued when the database is back. Every change carries the whole EventRecord, so a change
dropped from the queue loses only its notifications: the next change of that event writes the row whole.

Reads are read-your-writes: a read first waits (at most `read_wait_s`, and not at all while the database is
down) until every change submitted before it has been written. `get()`, `label()` and `delete()` also look
at the queue itself, so an event whose changes are still queued is found even then.

Labels and notes belong to people: changes from the engine never overwrite them. An event deleted (by
`delete()` or retention) while its changes are still coming is remembered (the newest 10000 ids), and its
later changes are skipped, so it is not written back.

Every method is thread-safe. Reads and `label`/`delete`/retention are blocking: call them from a thread
pool, never on the event loop. `queued()`, `depth()` and the counters are in-memory reads that never block.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..eventtypes import Box, ChangeKind, EndReason, EventChange, EventQuery, EventRecord, Label, Notification
from . import db
from .errors import (
    EventNotFound,
    InvalidQuery,
    NotificationNotFound,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from .schema import PENDING, EventRow, OutboxRow

log = logging.getLogger("vad.store")

EVENTS: sa.Table = EventRow.__table__  # type: ignore[assignment]
OUTBOX: sa.Table = OutboxRow.__table__  # type: ignore[assignment]

MAX_PAGE = 1000
MAX_NOTE = 10_000
MAX_ERROR = 1000
TOMBSTONES = 10_000
DELETE_CHUNK = 500
# Columns the engine's changes write; label and note are set only by people (label()).
ENGINE_COLUMNS = [c.name for c in EVENTS.columns if c.name not in ("id", "label", "note")]

MEDIA_COLUMNS = (EVENTS.c.snapshot_path, EVENTS.c.clean_snapshot_path, EVENTS.c.clip_path)

T = TypeVar("T")


@dataclass(frozen=True)
class _Pending:
    seq: int
    change_id: str  # makes the outbox rows of one change unique (a retried commit writes them once)
    change: EventChange
    notifications: tuple[tuple[str, str], ...]


class EventStore:
    """See the module docstring. Build it with `EventStore.open(...)`; `close()` it at shutdown."""

    def __init__(
        self, engine: Engine, url: URL, media_dir: Path, *, write_queue: int = 10_000, batch_size: int = 100,
        retry_min_s: float = 0.2, retry_max_s: float = 5.0, read_wait_s: float = 2.0,
        health_interval_s: float = 5.0,
    ) -> None:
        if write_queue < 1:
            raise ValueError(f"write_queue must be at least 1, not {write_queue}")
        self._engine = engine
        self._url = url
        self.media_dir = Path(media_dir)
        self._media_root = self.media_dir.resolve()
        self._limit = write_queue
        # At most half the queue is in flight, so a full queue always has a waiting change to drop.
        self._batch_size = max(1, min(batch_size, write_queue // 2))
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._read_wait_s = read_wait_s
        self._health_interval_s = health_interval_s

        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._inflight: builtins.list[_Pending] = []
        self._seq = 0
        self._tombstones: OrderedDict[str, None] = OrderedDict()
        self._closing = False
        self._closed = False
        self._close_deadline = math.inf
        self._wake = threading.Event()  # cuts a retry backoff short at close
        self._closed_submit_logged = False

        # Counters the service exports as metrics (plain values; no prometheus here).
        self.dropped = 0  # changes dropped: queue full (oldest first), or not written by close()
        self.write_errors = 0  # changes the database refused (not an outage): logged and skipped
        self.written = 0  # changes written
        self.outages = 0  # times the database became unreachable
        self.database_up = True
        self._depth = 0  # pending outbox rows (depth())
        self._depth_generation = 0  # bumped by every counted change, so a stale re-read is not applied

        # The outbox depth left by the last run (if the database does not answer, the writer reads it later).
        with contextlib.suppress(SQLAlchemyError):
            self._ping()
        self._writer = threading.Thread(target=self._run, name="vad-event-writer", daemon=True)
        self._writer.start()

    # --- opening and closing ----------------------------------------------------------------------

    @classmethod
    def open(
        cls, url: Any, data_dir: Path, *, write_queue: int = 10_000, connect_timeout_s: float = 5.0,
        statement_timeout_s: float = 15.0, connect_wait_s: float = 0.0, retry_max_s: float = 5.0,
        read_wait_s: float = 2.0, health_interval_s: float = 5.0, batch_size: int = 100,
    ) -> EventStore:
        """Connect, apply the migrations (idempotent) and start the writer thread.

        `url`: None for SQLite in DATA_DIR/vad.db, else a SQLAlchemy URL (a str or pydantic SecretStr);
        postgresql:// means psycopg 3. Media live in DATA_DIR/media. `connect_wait_s`: how long to keep
        trying while the database is unreachable before raising StoreUnavailable (0: one attempt).
        Raises InvalidDatabaseUrl for a bad URL, StoreUnavailable when the database cannot be migrated.
        """
        if hasattr(url, "get_secret_value"):
            url = url.get_secret_value()
        data_dir = Path(data_dir).expanduser()
        resolved = db.database_url(url, data_dir)
        engine = db.create_engine(resolved, connect_timeout_s=connect_timeout_s,
                                  statement_timeout_s=statement_timeout_s)
        deadline = time.monotonic() + connect_wait_s
        delay = 0.5
        while True:
            try:
                db.upgrade(engine)
                break
            except SQLAlchemyError as exc:
                if db.is_transient(exc) and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                engine.dispose()
                why = db.reason(exc, resolved)
                raise StoreUnavailable(
                    f"cannot open the event database {db.shown(resolved)}: {why}"
                ) from None
        log.info("event database %s ready", db.shown(resolved))
        return cls(engine, resolved, data_dir / "media", write_queue=write_queue, batch_size=batch_size,
                   retry_max_s=retry_max_s, read_wait_s=read_wait_s, health_interval_s=health_interval_s)

    @classmethod
    def from_settings(cls, settings: Any) -> EventStore:
        """From service.settings.Settings: events.database_url, events.event_write_queue, scenes.data_dir."""
        return cls.open(settings.events.database_url, settings.scenes.data_dir,
                        write_queue=settings.events.event_write_queue)

    @property
    def url(self) -> str:
        """The database URL as it may be shown (password hidden)."""
        return db.shown(self._url)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the writer after it has written what it can within `timeout_s`; the rest is dropped
        (counted and logged). Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._close_deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        self._wake.set()
        self._writer.join(timeout_s + 1.0)
        with self._cond:
            lost = len(self._queue) + len(self._inflight)
            self._queue.clear()
            self._inflight = []
            self.dropped += lost
            self._closed = True
            self._cond.notify_all()
        if lost:
            log.warning("event store closed with %d event changes not written (database %s unreachable)",
                        lost, db.shown(self._url))
        self._engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes (inference worker thread) --------------------------------------------------------

    def submit(self, change: EventChange, notifications: Sequence[tuple[str, str]] = ()) -> None:
        """Queue one event change and its notifications ((receiver, payload JSON) pairs). Never blocks on
        the database; beyond `write_queue` waiting changes the oldest is dropped (counted in `dropped`)."""
        if not isinstance(change, EventChange):
            raise TypeError(f"submit() takes an EventChange, not {type(change).__name__}")
        pairs = tuple((str(receiver), str(payload)) for receiver, payload in notifications)
        with self._cond:
            if self._closing or self._closed:
                self.dropped += 1
                if not self._closed_submit_logged:
                    self._closed_submit_logged = True
                    log.warning("event change submitted after the event store was closed: dropped")
                return
            if len(self._queue) + len(self._inflight) >= self._limit:
                if self._queue:
                    self._queue.popleft()
                    self.dropped += 1
                else:  # everything is in flight (write_queue of 1): the newcomer has nowhere to wait
                    self.dropped += 1
                    return
            self._seq += 1
            self._queue.append(_Pending(self._seq, uuid.uuid4().hex, change, pairs))
            self._cond.notify_all()

    def queued(self) -> int:
        """Changes waiting to be written (including those being written now)."""
        with self._cond:
            return len(self._queue) + len(self._inflight)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every change submitted before this call has been written (or dropped). False on timeout."""
        with self._cond:
            target = self._seq
            return self._cond.wait_for(lambda: self._first_pending_seq() > target, timeout_s)

    def _first_pending_seq(self) -> float:
        if self._inflight:
            return self._inflight[0].seq
        if self._queue:
            return self._queue[0].seq
        return math.inf

    def _run(self) -> None:
        delay = self._retry_min_s
        while True:
            with self._cond:
                if not self._queue and not self._closing:
                    self._cond.wait(self._health_interval_s if self.database_up else delay)
                if self._closing and (not self._queue or time.monotonic() >= self._close_deadline):
                    return
                batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
                self._inflight = batch
            try:
                if batch:
                    self._write_batch(batch)
                else:
                    self._ping()
            except Exception as exc:
                if not db.is_transient(exc):  # a bug here: keep the thread alive and the changes queued
                    log.exception("event writer failed: %s", db.reason(exc, self._url))
                self._requeue_inflight()
                self._mark_down(exc)
                with self._cond:
                    pause = min(delay, max(0.0, self._close_deadline - time.monotonic()))
                self._wake.wait(pause)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self._mark_up()
            delay = self._retry_min_s

    def _write_batch(self, batch: builtins.list[_Pending]) -> None:
        try:
            with self._engine.begin() as conn:
                added = sum(self._write_change(conn, pending) for pending in batch)
        except Exception as exc:
            if db.is_transient(exc):
                raise
            # One change the database (or the conversion) refuses must not hold back the others.
            for pending in list(batch):
                try:
                    with self._engine.begin() as conn:
                        added = self._write_change(conn, pending)
                except Exception as single:
                    if db.is_transient(single):
                        raise
                    log.error("event change %s of event %s not written: %s", pending.change.kind.value,
                              pending.change.event.id, db.reason(single, self._url))
                    self._done(1, ok=False)
                else:
                    self._done(1, added=added)
            return
        self._done(len(batch), added=added)

    def _done(self, count: int, *, ok: bool = True, added: int = 0) -> None:
        with self._cond:
            del self._inflight[:count]
            if ok:
                self.written += count
            else:
                self.write_errors += count
            self._count_pending(added)
            # Up before flush() returns: a caller that saw its changes written sees database_up too.
            was_down, self.database_up = not self.database_up, True
            waiting = len(self._queue)
            self._cond.notify_all()
        if was_down:
            self._log_back(waiting)

    def _requeue_inflight(self) -> None:
        with self._cond:
            self._queue.extendleft(reversed(self._inflight))
            self._inflight = []
            self._cond.notify_all()

    def _write_change(self, conn: Connection, pending: _Pending) -> int:
        """Write one change; the number of outbox rows it added."""
        record = pending.change.event
        with self._cond:
            if record.id in self._tombstones:
                return 0
        values = _row(record)
        insert = self._insert(EVENTS).values(**values)
        conn.execute(insert.on_conflict_do_update(
            index_elements=["id"], set_={name: insert.excluded[name] for name in ENGINE_COLUMNS}
        ))
        if pending.notifications:
            now = time.time()
            rows = [_outbox_row(pending.change_id, receiver, record.id, pending.change.kind, payload, now)
                    for receiver, payload in pending.notifications]
            insert = self._insert(OUTBOX).values(rows).on_conflict_do_nothing(index_elements=["change_id", "receiver"])
            if conn.dialect.insert_returning:  # psycopg reports no rowcount for this statement
                return len(conn.execute(insert.returning(OUTBOX.c.id)).all())
            return max(0, conn.execute(insert).rowcount)
        return 0

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def _ping(self) -> None:
        """The idle writer's health check, which also re-reads the outbox depth (e.g. after another
        process delivered notifications)."""
        with self._cond:
            generation = self._depth_generation
        with self._engine.connect() as conn:
            depth = int(conn.execute(
                sa.select(sa.func.count()).select_from(OUTBOX).where(sa.text(PENDING))).scalar() or 0)
        with self._cond:
            if generation == self._depth_generation:  # no change counted meanwhile
                self._depth = depth

    def _count_pending(self, delta: int) -> None:
        """Under self._cond: `delta` outbox rows became pending (or stopped being, when negative)."""
        if delta:
            self._depth = max(0, self._depth + delta)
            self._depth_generation += 1

    def _mark_down(self, exc: BaseException) -> None:
        with self._cond:
            was_up, self.database_up = self.database_up, False
            if was_up:
                self.outages += 1
            waiting = len(self._queue)
        if was_up:  # once per outage, not once per change
            log.warning("event database %s unreachable (%s); %d event changes queued, retrying",
                        db.shown(self._url), db.reason(exc, self._url), waiting)

    def _mark_up(self) -> None:
        with self._cond:
            was_down, self.database_up = not self.database_up, True
            waiting = len(self._queue)
        if was_down:
            self._log_back(waiting)

    def _log_back(self, waiting: int) -> None:
        log.warning("event database %s reachable again; %d event changes still queued",
                    db.shown(self._url), waiting)

    # --- reads (API thread pool) -----------------------------------------------------------------

    def get(self, event_id: str) -> EventRecord | None:
        """The event (None when there is none), including changes still queued."""
        event_id = _check_id(event_id)
        self._await_writes()
        if self._is_tombstone(event_id):
            return None
        pending = self._pending_record(event_id)
        try:
            row = self._read(lambda conn: conn.execute(
                sa.select(EVENTS).where(EVENTS.c.id == event_id)).one_or_none())
        except StoreUnavailable:
            if pending is None:
                raise
            return pending  # the database is down, but this event's newest state is in the queue
        stored = None if row is None else _record(row)
        return _merge(pending, stored)

    def list(self, query: EventQuery) -> tuple[builtins.list[EventRecord], str | None]:
        """One page of events, newest first by (started_at, id), and the cursor of the next page (None:
        last page). Sees every change submitted before the call (waits up to `read_wait_s` for them)."""
        if not isinstance(query, EventQuery):
            raise InvalidQuery(f"list() takes an EventQuery, not {type(query).__name__}")
        if not 1 <= query.limit <= MAX_PAGE:
            raise InvalidQuery(f"limit must be between 1 and {MAX_PAGE}, not {query.limit}")
        if query.label is not None and query.unlabeled:
            raise InvalidQuery("label and unlabeled exclude each other: give one of them")
        for name in ("since", "until", "min_peak"):
            value = getattr(query, name)
            if value is not None and not math.isfinite(value):
                raise InvalidQuery(f"{name} must be a finite number, not {value}")
        label = None if query.label is None else _label(query.label)
        conditions: builtins.list[sa.ColumnElement[bool]] = []
        if query.stream_id is not None:
            conditions.append(EVENTS.c.stream_id == query.stream_id)
        if query.since is not None:
            conditions.append(EVENTS.c.started_at >= query.since)
        if query.until is not None:
            conditions.append(EVENTS.c.started_at < query.until)
        if query.min_peak is not None:
            conditions.append(EVENTS.c.peak_score >= query.min_peak)
        if label is not None:
            conditions.append(EVENTS.c.label == label.value)
        if query.unlabeled:
            conditions.append(EVENTS.c.label.is_(None))
        if query.cursor is not None:
            started_at, last_id = _decode_cursor(query.cursor)
            conditions.append(sa.or_(
                EVENTS.c.started_at < started_at,
                sa.and_(EVENTS.c.started_at == started_at, EVENTS.c.id < last_id),
            ))
        statement = (sa.select(EVENTS).where(*conditions)
                     .order_by(EVENTS.c.started_at.desc(), EVENTS.c.id.desc()).limit(query.limit + 1))
        self._await_writes()
        rows = self._read(lambda conn: conn.execute(statement).all())
        records = [_record(row) for row in rows[:query.limit]]
        cursor = _encode_cursor(records[-1]) if len(rows) > query.limit else None
        return records, cursor

    def stats(self) -> dict[str, Any]:
        """Events by end reason (open ones under "open") and by label, media bytes, and the write path's
        and outbox's numbers."""
        self._await_writes()

        def read(conn: Connection) -> dict[str, Any]:
            by_reason = conn.execute(sa.select(
                EVENTS.c.end_reason, EVENTS.c.ended_at.is_(None), sa.func.count(),
                sa.func.coalesce(sa.func.sum(EVENTS.c.media_bytes), 0),
            ).group_by(EVENTS.c.end_reason, EVENTS.c.ended_at.is_(None))).all()
            by_label = conn.execute(sa.select(EVENTS.c.label, sa.func.count()).group_by(EVENTS.c.label)).all()
            depth = conn.execute(sa.select(sa.func.count()).select_from(OUTBOX).where(sa.text(PENDING))).scalar()
            reasons: dict[str, int] = {}
            total = open_count = media = 0
            for reason, is_open, count, size in by_reason:
                total += count
                media += int(size)
                if is_open:
                    open_count += count
                else:
                    key = reason or "unknown"
                    reasons[key] = reasons.get(key, 0) + count
            labels = {label or "unlabeled": count for label, count in by_label}
            return {"events": total, "open": open_count, "by_end_reason": reasons, "by_label": labels,
                    "media_bytes": media, "outbox_depth": int(depth or 0)}

        result = self._read(read)
        with self._cond:
            result |= {"queued": len(self._queue) + len(self._inflight), "dropped": self.dropped,
                       "write_errors": self.write_errors, "database_up": self.database_up}
        return result

    # --- people's changes (API thread pool) ------------------------------------------------------

    def label(self, event_id: str, label: Label | str | None, note: str | None) -> EventRecord:
        """Set (or clear, with None) the event's label and note; returns the event. EventNotFound if none."""
        event_id = _check_id(event_id)
        value = None if label is None else _label(label).value
        if note is not None:
            if not isinstance(note, str):
                raise InvalidQuery(f"note must be text, not {type(note).__name__}")
            if len(note) > MAX_NOTE:
                raise InvalidQuery(f"note is {len(note)} characters long; at most {MAX_NOTE}")
        self._await_writes()
        pending = None if self._is_tombstone(event_id) else self._pending_record(event_id)

        def write(conn: Connection) -> Any:
            changed = conn.execute(EVENTS.update().where(EVENTS.c.id == event_id)
                                   .values(label=value, note=note)).rowcount
            if not changed and pending is not None:
                # Its changes are still queued: write the newest now, with the label.
                insert = self._insert(EVENTS).values(**_row(pending), label=value, note=note)
                conn.execute(insert.on_conflict_do_update(
                    index_elements=["id"], set_={"label": value, "note": note}))
            return conn.execute(sa.select(EVENTS).where(EVENTS.c.id == event_id)).one_or_none()

        row = self._write_now(write)
        if row is None:
            raise EventNotFound(event_id)
        return _merge(pending, _record(row))

    def delete(self, event_id: str) -> EventRecord:
        """Delete the event and its media files; returns it as it was. EventNotFound if none. Its changes
        still to come (an open event) are skipped."""
        event_id = _check_id(event_id)
        self._await_writes()
        pending = None if self._is_tombstone(event_id) else self._pending_record(event_id)

        def write(conn: Connection) -> Any:
            row = conn.execute(sa.select(EVENTS).where(EVENTS.c.id == event_id)).one_or_none()
            conn.execute(EVENTS.delete().where(EVENTS.c.id == event_id))
            return row

        row = self._write_now(write)
        stored = None if row is None else _record(row)
        record = _merge(pending, stored)
        if record is None:
            raise EventNotFound(event_id)
        if pending is not None or record.open:
            self._tombstone(event_id)
        for candidate in {r for r in (record, stored) if r is not None}:
            self._delete_media(candidate)
        return record

    # --- retention (a background thread) ---------------------------------------------------------

    def enforce_retention(self, max_age_s: float, max_bytes: int, *, now: float | None = None) -> dict[str, int]:
        """Delete events that started more than `max_age_s` ago, then the oldest ended events with media
        until the media of all events total at most `max_bytes`; rows first, then their files. Also prunes
        outbox rows older than `max_age_s` and media files older than it that no event refers to (left by
        a change that was never written). Returns what it deleted."""
        if not (isinstance(max_age_s, int | float) and max_age_s > 0 and math.isfinite(max_age_s)):
            raise ValueError(f"max_age_s must be a positive number of seconds, not {max_age_s!r}")
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a whole number of bytes >= 0, not {max_bytes!r}")
        now = time.time() if now is None else now
        cutoff = now - max_age_s
        self._await_writes()  # an old event whose change is still queued is deleted too, not written after
        result = {"deleted_by_age": 0, "deleted_by_bytes": 0, "freed_bytes": 0, "files_deleted": 0,
                  "orphan_files_deleted": 0, "outbox_pruned": 0}

        # By age: every event that started before the cutoff, open or not (an open one that old is stale).
        while True:
            rows = self._read(lambda conn: conn.execute(
                sa.select(EVENTS).where(EVENTS.c.started_at < cutoff)
                .order_by(EVENTS.c.started_at, EVENTS.c.id).limit(DELETE_CHUNK)).all())
            if not rows:
                break
            self._delete_rows([_record(r) for r in rows], result, "deleted_by_age")
            if len(rows) < DELETE_CHUNK:
                break

        # By bytes: the oldest ended events that have media, until the total fits.
        def total_bytes(conn: Connection) -> int:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(EVENTS.c.media_bytes), 0))).scalar() or 0)

        excess = self._read(total_bytes) - max_bytes
        while excess > 0:
            rows = self._read(lambda conn: conn.execute(
                sa.select(EVENTS).where(EVENTS.c.ended_at.is_not(None), EVENTS.c.media_bytes > 0)
                .order_by(EVENTS.c.started_at, EVENTS.c.id).limit(DELETE_CHUNK)).all())
            if not rows:
                break
            victims: builtins.list[EventRecord] = []
            for row in rows:
                if excess <= 0:
                    break
                victims.append(_record(row))
                excess -= row.media_bytes
            self._delete_rows(victims, result, "deleted_by_bytes")

        def prune(conn: Connection) -> tuple[int, int]:
            pending = conn.execute(OUTBOX.delete().where(OUTBOX.c.created_at < cutoff, sa.text(PENDING))).rowcount
            done = conn.execute(OUTBOX.delete().where(OUTBOX.c.created_at < cutoff)).rowcount
            return pending, done

        pending_pruned, done_pruned = self._write_now(prune)
        with self._cond:
            self._count_pending(-pending_pruned)
        result["outbox_pruned"] = pending_pruned + done_pruned
        result["orphan_files_deleted"] = self._delete_orphans(cutoff)
        if any(result.values()):
            log.info("event retention: %s", ", ".join(f"{k} {v}" for k, v in result.items()))
        return result

    def _delete_rows(self, records: builtins.list[EventRecord], result: dict[str, int], key: str) -> None:
        ids = [r.id for r in records]
        for record in records:
            if record.open:
                self._tombstone(record.id)
        self._write_now(lambda conn: conn.execute(EVENTS.delete().where(EVENTS.c.id.in_(ids))))
        result[key] += len(records)
        for record in records:  # after the commit: a failed delete keeps its files
            result["files_deleted"] += self._delete_media(record)
            result["freed_bytes"] += record.media_bytes

    def _delete_orphans(self, cutoff: float) -> int:
        if not self.media_dir.is_dir():
            return 0
        old: builtins.list[str] = []
        for folder, _dirs, files in os.walk(self.media_dir):
            for name in files:
                path = Path(folder) / name
                try:
                    if path.stat().st_mtime < cutoff:
                        old.append(path.relative_to(self.media_dir).as_posix())
                except OSError:
                    continue
        deleted = 0
        for start in range(0, len(old), DELETE_CHUNK):
            chunk = old[start:start + DELETE_CHUNK]
            referenced = {value for row in self._read(lambda conn, chunk=chunk: conn.execute(
                sa.select(*MEDIA_COLUMNS).where(sa.or_(*(c.in_(chunk) for c in MEDIA_COLUMNS)))).all())
                for value in row}
            for relative in chunk:
                if relative not in referenced and self._unlink(relative):
                    deleted += 1
        return deleted

    # --- the Outbox protocol (service/eventtypes.py; notifier threads) ----------------------------

    def enqueue(self, event_id: str, kind: ChangeKind, payload: str, receivers: Iterable[str]) -> None:
        """Write one outbox row per receiver now, in one transaction (the engine's notifications go through
        submit(), in the transaction of their event change)."""
        event_id = _check_id(event_id)
        kind = ChangeKind(kind)
        now = time.time()
        change_id = uuid.uuid4().hex
        rows = [_outbox_row(change_id, str(r), event_id, kind, str(payload), now) for r in receivers]
        if rows:
            self._await_writes()  # after the notifications submitted before it, as ids order delivery
            self._write_now(lambda conn: conn.execute(OUTBOX.insert().values(rows)))
            with self._cond:
                self._count_pending(len(rows))

    def due(self, receiver_prefix: str, now: float, limit: int) -> builtins.list[Notification]:
        """Undelivered, not given-up rows of receivers starting with `receiver_prefix` whose next attempt is
        at or before `now`, oldest first. Reading marks nothing: call delivered() or failed() for each."""
        if limit < 1:
            raise InvalidQuery(f"limit must be at least 1, not {limit}")
        rows = self._read(lambda conn: conn.execute(
            sa.select(OUTBOX).where(
                sa.text(PENDING),  # the partial index's own condition, so SQLite uses it
                OUTBOX.c.receiver.startswith(receiver_prefix, autoescape=True),
                OUTBOX.c.next_attempt_at <= now,
            ).order_by(OUTBOX.c.id).limit(limit)).all())
        return [Notification(id=row.id, receiver=row.receiver, event_id=row.event_id, kind=ChangeKind(row.kind),
                             payload=row.payload, attempts=row.attempts, next_attempt_at=row.next_attempt_at,
                             last_error=row.last_error) for row in rows]

    def delivered(self, notification_id: int) -> None:
        """Mark delivered: never returned by due() again. Idempotent."""
        self._update_pending(notification_id, {"delivered_at": time.time()})

    def failed(self, notification_id: int, error: str, next_attempt_at: float | None) -> None:
        """Count a failed attempt and say when to try again; None: give up (kept, never retried)."""
        values: dict[str, Any] = {"attempts": OUTBOX.c.attempts + 1, "last_error": str(error)[:MAX_ERROR]}
        if next_attempt_at is None:
            values["given_up"] = True
        else:
            values["next_attempt_at"] = float(next_attempt_at)
        self._update_pending(notification_id, values)

    def depth(self) -> int:
        """Undelivered rows that will still be tried (the outbox-depth gauge). A count kept in memory (exact
        for this process's changes, re-read from the database by the idle writer every few seconds):
        never blocks and never raises, so a metrics scrape on the event loop may call it."""
        with self._cond:
            return self._depth

    def _update_pending(self, notification_id: int, values: dict[str, Any]) -> None:
        if isinstance(notification_id, bool) or not isinstance(notification_id, int):
            raise InvalidQuery(f"a notification id is an integer, not {notification_id!r}")

        def write(conn: Connection) -> tuple[bool, bool]:
            changed = conn.execute(OUTBOX.update().where(
                OUTBOX.c.id == notification_id, sa.text(PENDING),
            ).values(**values)).rowcount
            # Already delivered or given up: nothing to do (a retried call), but an unknown id is an error.
            return bool(changed), bool(changed) or conn.execute(
                sa.select(OUTBOX.c.id).where(OUTBOX.c.id == notification_id)).first() is not None

        changed, found = self._write_now(write)
        if not found:
            raise NotificationNotFound(notification_id)
        if changed and ("delivered_at" in values or "given_up" in values):
            with self._cond:
                self._count_pending(-1)

    # --- helpers ---------------------------------------------------------------------------------

    def _await_writes(self) -> None:
        """Read-your-writes: wait for the changes submitted so far, unless the database is down."""
        if self.database_up and self._read_wait_s > 0:
            self.flush(self._read_wait_s)

    def _pending_record(self, event_id: str) -> EventRecord | None:
        with self._cond:
            for pending in reversed([*self._inflight, *self._queue]):
                if pending.change.event.id == event_id:
                    return pending.change.event
        return None

    def _is_tombstone(self, event_id: str) -> bool:
        with self._cond:
            return event_id in self._tombstones

    def _tombstone(self, event_id: str) -> None:
        with self._cond:
            self._tombstones[event_id] = None
            self._tombstones.move_to_end(event_id)
            while len(self._tombstones) > TOMBSTONES:
                self._tombstones.popitem(last=False)

    def _read(self, work: Callable[[Connection], T]) -> T:
        self._check_open()
        try:
            with self._engine.connect() as conn:
                return work(conn)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    def _write_now(self, work: Callable[[Connection], T]) -> T:
        self._check_open()
        try:
            with self._engine.begin() as conn:
                return work(conn)
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: SQLAlchemyError) -> StoreError:
        why = db.reason(exc, self._url)
        if db.is_transient(exc):
            return StoreUnavailable(f"the event database {db.shown(self._url)} is unavailable: {why}")
        return StoreError(f"the event database {db.shown(self._url)} refused the request: {why}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    def _delete_media(self, record: EventRecord) -> int:
        paths = (record.snapshot_path, record.clean_snapshot_path, record.clip_path)
        return sum(self._unlink(p) for p in paths if p)

    def _unlink(self, relative: str) -> bool:
        target = (self._media_root / relative).resolve()
        if not target.is_relative_to(self._media_root) or target == self._media_root:
            log.warning("event media path %r lies outside the media folder: not deleted", relative)
            return False
        try:
            target.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot delete event media %s: %s", relative, exc.strerror or exc)
            return False


# --- rows, records, cursors ----------------------------------------------------------------------


def _row(record: EventRecord) -> dict[str, Any]:
    box = record.box
    return {
        "id": record.id, "stream_id": record.stream_id, "stream_name": record.stream_name, "model": record.model,
        "started_at": record.started_at, "start_frame": record.start_frame, "peak_score": record.peak_score,
        "peak_frame": record.peak_frame, "peak_at": record.peak_at,
        "box_x": None if box is None else box.x, "box_y": None if box is None else box.y,
        "box_w": None if box is None else box.w, "box_h": None if box is None else box.h,
        "frames_above": record.frames_above, "threshold": record.threshold, "ended_at": record.ended_at,
        "end_frame": record.end_frame,
        "end_reason": None if record.end_reason is None else EndReason(record.end_reason).value,
        "label": None if record.label is None else Label(record.label).value, "note": record.note,
        "snapshot_path": record.snapshot_path, "clean_snapshot_path": record.clean_snapshot_path,
        "clip_path": record.clip_path, "media_bytes": record.media_bytes, "media_error": record.media_error,
    }


def _record(row: Any) -> EventRecord:
    box = None
    if None not in (row.box_x, row.box_y, row.box_w, row.box_h):
        box = Box(row.box_x, row.box_y, row.box_w, row.box_h)
    return EventRecord(
        id=row.id, stream_id=row.stream_id, stream_name=row.stream_name, model=row.model,
        started_at=row.started_at, start_frame=row.start_frame, peak_score=row.peak_score,
        peak_frame=row.peak_frame, peak_at=row.peak_at, box=box, frames_above=row.frames_above,
        threshold=row.threshold, ended_at=row.ended_at, end_frame=row.end_frame,
        end_reason=None if row.end_reason is None else EndReason(row.end_reason),
        label=None if row.label is None else Label(row.label), note=row.note,
        snapshot_path=row.snapshot_path, clean_snapshot_path=row.clean_snapshot_path, clip_path=row.clip_path,
        media_bytes=row.media_bytes, media_error=row.media_error,
    )


def _merge(pending: EventRecord | None, stored: EventRecord | None) -> EventRecord | None:
    """The newest state: the queued change's fields, with the label and note people set in the database."""
    if pending is None:
        return stored
    if stored is None:
        return pending
    from dataclasses import replace

    return replace(pending, label=stored.label, note=stored.note)


def _outbox_row(change_id: str, receiver: str, event_id: str, kind: ChangeKind, payload: str,
                now: float) -> dict[str, Any]:
    return {"change_id": change_id, "receiver": receiver, "event_id": event_id, "kind": ChangeKind(kind).value,
            "payload": payload, "attempts": 0, "next_attempt_at": 0.0, "delivered_at": None, "given_up": False,
            "last_error": None, "created_at": now}


def _check_id(event_id: Any) -> str:
    if not isinstance(event_id, str) or not event_id or len(event_id) > 64:
        raise InvalidQuery(f"an event id is a short text (32 hex characters), not {event_id!r:.80}")
    return event_id


def _label(value: Label | str) -> Label:
    try:
        return Label(value)
    except ValueError:
        raise InvalidQuery(
            f"unknown label {value!r:.80}; one of: {', '.join(label.value for label in Label)}"
        ) from None


def _encode_cursor(record: EventRecord) -> str:
    raw = json.dumps([record.started_at, record.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started_at, last_id = json.loads(raw)
        if isinstance(started_at, bool) or not isinstance(started_at, int | float) or not isinstance(last_id, str):
            raise ValueError
        return float(started_at), last_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidQuery("invalid cursor: pass the next_cursor of the previous page unchanged") from None
