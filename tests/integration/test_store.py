"""The event store (service/store/) against a real SQLite file and a real PostgreSQL server: one suite,
parametrised over both. The PostgreSQL server (tests/support/postgres.py) is shared by the module; every
test gets a fresh database on it. Outages are real: PostgreSQL is stopped and started again; SQLite is
held under an exclusive lock by another connection."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.eventtypes import Box, ChangeKind, EndReason, EventChange, EventQuery, EventRecord, Label
from service.store import (
    EventNotFound,
    EventStore,
    InvalidDatabaseUrl,
    InvalidQuery,
    NotificationNotFound,
    RetentionWorker,
    StoreUnavailable,
)
from service.store.db import VERSION_TABLE
from service.store.schema import Base
from tests.support.postgres import PASSWORD, PostgresServer, postgres_available

DAY = 86_400.0
# Fast retries and health checks: outages start and end within a second here.
FAST = {"retry_max_s": 0.2, "health_interval_s": 0.2, "connect_timeout_s": 2.0}


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    why = postgres_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is needed in CI: {why}")
        pytest.skip(why)
    with PostgresServer() as server:
        yield server


@dataclass
class Backend:
    name: str
    url: str | None
    data_dir: Path
    server: PostgresServer | None = None
    stores: list[EventStore] = field(default_factory=list)

    def open(self, **options: Any) -> EventStore:
        store = EventStore.open(self.url, self.data_dir, **(FAST | options))
        self.stores.append(store)
        return store

    @property
    def media(self) -> Path:
        return self.data_dir / "media"

    @contextmanager
    def outage(self) -> Iterator[None]:
        """The database unreachable for the writer: PostgreSQL stopped, or SQLite locked by another writer."""
        if self.server is not None:
            self.server.stop()
            try:
                yield
            finally:
                self.server.start()
            return
        lock = sqlite3.connect(self.data_dir / "vad.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        found = Backend("postgresql", server.create_database(), tmp_path, server)
    else:
        found = Backend("sqlite", None, tmp_path)
    yield found
    for store in found.stores:
        store.close(timeout_s=1.0)


def make_event(n: int = 1, **changes: Any) -> EventRecord:
    base = EventRecord(
        id=uuid.UUID(int=n).hex, stream_id="cam-1", stream_name="Front door", model="ped2",
        started_at=1_700_000_000.0 + n, start_frame=10 * n, peak_score=3.5, peak_frame=10 * n + 2,
        peak_at=1_700_000_000.5 + n, box=Box(10, 20, 30, 40), frames_above=5, threshold=2.5,
    )
    return replace(base, **changes)


def start(record: EventRecord) -> EventChange:
    return EventChange(ChangeKind.START, record)


def end(record: EventRecord, **changes: Any) -> EventChange:
    changes = {"ended_at": record.started_at + 4.0, "end_frame": record.start_frame + 40,
               "end_reason": EndReason.RELEASED} | changes
    return EventChange(ChangeKind.END, replace(record, **changes))


def write_media(backend: Backend, name: str, size: int) -> str:
    path = backend.media / "cam-1" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return f"cam-1/{name}"


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# --- events ------------------------------------------------------------------------------------------


def test_event_start_update_end_round_trips_every_field(backend: Backend) -> None:
    store = backend.open()
    record = make_event(1)
    store.submit(start(record))
    assert store.flush()
    assert store.get(record.id) == record

    peak = replace(record, peak_score=7.25, peak_frame=99, peak_at=record.started_at + 2, box=None, frames_above=9)
    store.submit(EventChange(ChangeKind.UPDATE, peak))
    ended = end(peak, snapshot_path="cam-1/a.jpg", clean_snapshot_path="cam-1/a-clean.jpg",
                clip_path="cam-1/a.mp4", media_bytes=1234, media_error="clip: disk full")
    store.submit(ended)
    assert store.flush()
    got = store.get(record.id)
    assert got == ended.event
    assert got is not None and got.box is None and not got.open and got.duration_s == 4.0
    assert store.get(uuid.UUID(int=999).hex) is None
    assert store.written == 3 and store.write_errors == 0 and store.dropped == 0


def test_changes_of_one_event_stay_in_order(backend: Backend) -> None:
    store = backend.open(batch_size=7)
    record = make_event(1)
    store.submit(start(record))
    for step in range(60):
        store.submit(EventChange(ChangeKind.UPDATE, replace(record, peak_score=4.0 + step, peak_frame=step)))
    store.submit(end(replace(record, peak_score=63.0, peak_frame=59)))
    got = store.get(record.id)
    assert got is not None and got.peak_score == 63.0 and got.end_reason is EndReason.RELEASED


def test_reads_see_changes_just_submitted(backend: Backend) -> None:
    store = backend.open()
    records = [make_event(n) for n in range(1, 6)]
    for record in records:
        store.submit(start(record))
    # No flush: every read waits for what was submitted before it.
    assert store.get(records[-1].id) == records[-1]
    assert [r.id for r in store.list(EventQuery())[0]] == [r.id for r in reversed(records)]
    assert store.stats()["open"] == 5


def test_list_filters(backend: Backend) -> None:
    store = backend.open()
    a = make_event(1, stream_id="cam-a", peak_score=3.0)
    b = make_event(2, stream_id="cam-b", peak_score=9.0)
    c = make_event(3, stream_id="cam-a", peak_score=6.0)
    d = make_event(4, stream_id="cam-b", peak_score=4.0)
    for record in (a, b, c, d):
        store.submit(end(record))
    store.label(b.id, Label.TRUE_ALARM, "a person running")
    store.label(c.id, Label.FALSE_ALARM, None)

    def ids(**filters: Any) -> list[str]:
        return [r.id for r in store.list(EventQuery(**filters))[0]]

    assert ids() == [d.id, c.id, b.id, a.id]
    assert ids(stream_id="cam-a") == [c.id, a.id]
    assert ids(stream_id="nope") == []
    assert ids(since=b.started_at) == [d.id, c.id, b.id]
    assert ids(until=c.started_at) == [b.id, a.id]
    assert ids(since=b.started_at, until=d.started_at) == [c.id, b.id]
    assert ids(min_peak=6.0) == [c.id, b.id]
    assert ids(label=Label.TRUE_ALARM) == [b.id]
    assert ids(label=Label.FALSE_ALARM, stream_id="cam-a") == [c.id]
    assert ids(unlabeled=True) == [d.id, a.id]
    assert ids(stream_id="cam-b", min_peak=5.0, unlabeled=False) == [b.id]

    for bad in (EventQuery(limit=0), EventQuery(limit=1001), EventQuery(label=Label.TRUE_ALARM, unlabeled=True),
                EventQuery(since=float("nan")), EventQuery(cursor="not a cursor!"),
                EventQuery(cursor="W251bGwsbnVsbF0")):  # '[null,null]': well-formed base64, bad content
        with pytest.raises(InvalidQuery) as error:
            store.list(bad)
        assert str(error.value)


def test_cursor_pagination_has_no_duplicates_or_gaps(backend: Backend) -> None:
    store = backend.open()
    # Ties on started_at on purpose: the cursor orders by (started_at, id).
    records = [make_event(n, started_at=1_700_000_000.0 + n // 4, stream_id=f"cam-{n % 2}")
               for n in range(1, 24)]
    for record in records:
        store.submit(end(record))
    expected = sorted(records, key=lambda r: (r.started_at, r.id), reverse=True)

    for query in (EventQuery(limit=5), EventQuery(limit=1), EventQuery(limit=23), EventQuery(limit=4, stream_id="cam-1")):
        pages, cursor, seen = 0, None, []
        while True:
            page, cursor = store.list(replace(query, cursor=cursor))
            seen += [r.id for r in page]
            pages += 1
            if cursor is None:
                break
        wanted = [r.id for r in expected if query.stream_id in (None, r.stream_id)]
        assert seen == wanted
        assert pages == max(1, -(-len(wanted) // query.limit))


def test_label_and_note(backend: Backend) -> None:
    store = backend.open()
    record = make_event(1)
    store.submit(start(record))
    labelled = store.label(record.id, Label.TRUE_ALARM, "bike on the walkway")
    assert (labelled.label, labelled.note) == (Label.TRUE_ALARM, "bike on the walkway")
    # The engine's later changes (label None) never overwrite what people set.
    store.submit(end(record))
    got = store.get(record.id)
    assert got is not None and got.label is Label.TRUE_ALARM and got.end_reason is EndReason.RELEASED
    assert store.label(record.id, "false_alarm", None).label is Label.FALSE_ALARM
    cleared = store.label(record.id, None, None)
    assert cleared.label is None and cleared.note is None

    with pytest.raises(EventNotFound, match="no event with id"):
        store.label(uuid.UUID(int=404).hex, Label.TRUE_ALARM, None)
    with pytest.raises(InvalidQuery, match="unknown label"):
        store.label(record.id, "maybe", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery, match="at most"):
        store.label(record.id, None, "x" * 10_001)


def test_delete_removes_row_and_media(backend: Backend) -> None:
    store = backend.open()
    outside = backend.data_dir / "outside.txt"
    outside.write_text("keep me")
    paths = [write_media(backend, "e1.jpg", 100), write_media(backend, "e1-clean.jpg", 100),
             write_media(backend, "e1.mp4", 500)]
    record = end(make_event(1, snapshot_path=paths[0], clean_snapshot_path=paths[1], clip_path=paths[2],
                            media_bytes=700)).event
    store.submit(EventChange(ChangeKind.END, record))
    other = make_event(2, snapshot_path="../outside.txt")  # a path escaping the media folder
    store.submit(end(other))

    assert store.delete(record.id) == record
    assert store.get(record.id) is None
    assert not any((backend.media / p).exists() for p in paths)
    with pytest.raises(EventNotFound):
        store.delete(record.id)
    store.delete(other.id)
    assert outside.read_text() == "keep me"

    # An open event deleted: its later changes are not written back.
    live = make_event(3)
    store.submit(start(live))
    store.delete(live.id)
    store.submit(EventChange(ChangeKind.UPDATE, replace(live, peak_score=9.0)))
    store.submit(end(live))
    assert store.flush()
    assert store.get(live.id) is None
    assert store.list(EventQuery())[0] == []


def test_stats(backend: Backend) -> None:
    store = backend.open()
    store.submit(end(make_event(1, media_bytes=100)))
    store.submit(end(make_event(2, media_bytes=50), end_reason=EndReason.MAX_DURATION))
    store.submit(end(make_event(3), end_reason=EndReason.MAX_DURATION))
    store.submit(start(make_event(4, media_bytes=7)))
    store.label(make_event(1).id, Label.FALSE_ALARM, None)
    stats = store.stats()
    assert stats["events"] == 4 and stats["open"] == 1 and stats["media_bytes"] == 157
    assert stats["by_end_reason"] == {"released": 1, "max_duration": 2}
    assert stats["by_label"] == {"false_alarm": 1, "unlabeled": 3}
    assert stats["queued"] == 0 and stats["database_up"] is True


# --- retention -----------------------------------------------------------------------------------


def test_retention_by_age_and_by_bytes(backend: Backend) -> None:
    store = backend.open()
    now = time.time()

    def event(n: int, age_days: float, size: int, *, ended: bool = True) -> EventRecord:
        path = write_media(backend, f"e{n}.jpg", size) if size else None
        record = make_event(n, started_at=now - age_days * DAY, snapshot_path=path, media_bytes=size)
        store.submit(end(record) if ended else start(record))
        return end(record).event if ended else record

    old = event(1, 40, 100)
    stale_open = event(2, 35, 0, ended=False)
    c = event(3, 3, 200)
    b = event(4, 2, 300)
    no_media = event(5, 4, 0)
    live = event(6, 0, 50, ended=False)
    # Media no event refers to (a change never written): the old file goes, the new one stays.
    orphan_old = backend.media / write_media(backend, "orphan-old.jpg", 10)
    os.utime(orphan_old, (now - 40 * DAY, now - 40 * DAY))
    orphan_new = backend.media / write_media(backend, "orphan-new.jpg", 10)
    store.enqueue(old.id, ChangeKind.END, "{}", ["webhook:x"])

    result = store.enforce_retention(30 * DAY, 10**9)
    assert result["deleted_by_age"] == 2 and result["deleted_by_bytes"] == 0
    assert result["files_deleted"] == 1 and result["orphan_files_deleted"] == 1
    assert store.get(old.id) is None and store.get(stale_open.id) is None
    assert not (backend.media / old.snapshot_path).exists() and not orphan_old.exists() and orphan_new.exists()

    # 550 bytes of media; at most 350: the oldest ended event with media (c, 200) goes, b stays.
    result = store.enforce_retention(30 * DAY, 350)
    assert result["deleted_by_bytes"] == 1 and result["freed_bytes"] == 200
    assert store.get(c.id) is None and not (backend.media / c.snapshot_path).exists()
    assert {r.id for r in store.list(EventQuery())[0]} == {b.id, no_media.id, live.id}
    assert store.stats()["media_bytes"] == 350
    assert store.enforce_retention(30 * DAY, 350)["deleted_by_bytes"] == 0

    # Everything ages out, outbox rows included.
    assert store.depth() == 1
    result = store.enforce_retention(30 * DAY, 10**9, now=now + 60 * DAY)
    assert result["deleted_by_age"] == 3 and result["outbox_pruned"] == 1
    assert store.list(EventQuery())[0] == [] and store.depth() == 0
    assert sorted(p.name for p in backend.media.rglob("*") if p.is_file()) == []

    with pytest.raises(ValueError, match="max_age_s"):
        store.enforce_retention(0, 1)
    with pytest.raises(ValueError, match="max_bytes"):
        store.enforce_retention(1.0, -1)


def test_retention_worker_runs_in_the_background(backend: Backend) -> None:
    store = backend.open()
    now = time.time()
    store.submit(end(make_event(1, started_at=now - 10 * DAY)))
    store.submit(end(make_event(2, started_at=now)))
    worker = RetentionWorker(store, max_age_s=DAY, max_bytes=10**9, interval_s=0.05).start()
    try:
        wait_for(lambda: worker.runs >= 2)
    finally:
        worker.stop()
    assert worker.errors == 0 and worker.last_error is None
    assert [r.id for r in store.list(EventQuery())[0]] == [make_event(2).id]


# --- outbox --------------------------------------------------------------------------------------


def test_outbox_due_delivered_failed_depth(backend: Backend) -> None:
    store = backend.open()
    record = make_event(1)
    store.submit(start(record), [("webhook:a1", '{"n": 1}'), ("mqtt", '{"n": 1}')])
    store.submit(end(record), [("webhook:a1", '{"n": 2}'), ("webhook:b2", '{"n": 2}')])
    store.enqueue(record.id, ChangeKind.UPDATE, '{"n": 3}', ["mqtt", "webhook%_"])
    assert store.flush()
    assert store.depth() == 6
    now = time.time()

    hooks = store.due("webhook:", now, 10)
    assert [(n.receiver, n.payload, n.kind) for n in hooks] == [
        ("webhook:a1", '{"n": 1}', ChangeKind.START), ("webhook:a1", '{"n": 2}', ChangeKind.END),
        ("webhook:b2", '{"n": 2}', ChangeKind.END)]
    assert all(n.event_id == record.id and n.attempts == 0 for n in hooks)
    assert [n.payload for n in store.due("mqtt", now, 10)] == ['{"n": 1}', '{"n": 3}']
    assert [n.receiver for n in store.due("webhook%", now, 10)] == ["webhook%_"]  # no LIKE wildcards
    assert len(store.due("", now, 2)) == 2
    assert [n.id for n in store.due("", now, 100)] == sorted(n.id for n in store.due("", now, 100))

    first, second, third = hooks
    store.delivered(first.id)
    store.delivered(first.id)  # idempotent
    store.failed(second.id, "HTTP 503", now + 60)
    store.failed(third.id, "HTTP 410 gone", None)  # given up
    assert store.due("webhook:", now, 10) == []
    retried = store.due("webhook:", now + 61, 10)
    assert [(n.id, n.attempts, n.last_error, n.next_attempt_at) for n in retried] == [
        (second.id, 1, "HTTP 503", now + 60)]
    store.failed(first.id, "late", now)  # already delivered: nothing changes
    assert store.depth() == 4
    store.delivered(second.id)
    assert store.due("webhook:", now + 1e9, 10) == [] and store.depth() == 3

    with pytest.raises(NotificationNotFound, match="no outbox notification"):
        store.delivered(987654)
    with pytest.raises(InvalidQuery):
        store.due("", now, 0)


def test_outbox_rows_of_a_retried_change_are_written_once(backend: Backend) -> None:
    """A commit that succeeded but whose reply was lost is retried: the same change writes no second row."""
    from service.store.store import _Pending

    store = backend.open()
    store.submit(start(make_event(1)), [("webhook:a", "{}"), ("mqtt", "{}")])
    assert store.flush()
    # The writer's own transaction, run twice for one queued change (as a retry after a lost reply does).
    change = _Pending(1, uuid.uuid4().hex, start(make_event(2)), (("webhook:a", "{}"),))
    store._inflight = [change]
    store._write_batch([change])
    store._inflight = [change]
    store._write_batch([change])
    assert store.depth() == 3 and store.write_errors == 0


def test_store_implements_the_outbox_protocol() -> None:
    import inspect

    from service.eventtypes import Outbox

    for name in ("enqueue", "due", "delivered", "failed", "depth"):
        wanted = list(inspect.signature(getattr(Outbox, name)).parameters)
        assert list(inspect.signature(getattr(EventStore, name)).parameters) == wanted, name


def test_a_change_the_database_refuses_is_skipped_and_counted(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    store = backend.open()
    bad = end(make_event(2), end_reason="exploded")  # not an EndReason: cannot be stored
    store.submit(start(make_event(1)))
    store.submit(bad, [("mqtt", "bad")])
    store.submit(start(make_event(3)), [("mqtt", "good")])
    assert store.flush()
    assert store.write_errors == 1 and store.written == 2 and store.database_up
    assert [r.id for r in store.list(EventQuery())[0]] == [make_event(3).id, make_event(1).id]
    assert [n.payload for n in store.due("mqtt", time.time(), 10)] == ["good"]
    assert any("not written" in r.getMessage() for r in caplog.records)


# --- restart and migrations ----------------------------------------------------------------------


def test_restart_keeps_everything(backend: Backend) -> None:
    store = backend.open()
    records = [make_event(n) for n in range(1, 4)]
    for record in records:
        store.submit(end(record), [("mqtt", "{}")])
    store.label(records[0].id, Label.TRUE_ALARM, "kept")
    store.close()

    again = backend.open()
    assert [r.id for r in again.list(EventQuery())[0]] == [r.id for r in reversed(records)]
    got = again.get(records[0].id)
    assert got is not None and got.label is Label.TRUE_ALARM and got.note == "kept"
    assert again.depth() == 3


def test_migrations_on_an_empty_database_are_idempotent_and_match_the_models(backend: Backend) -> None:
    first = backend.open()
    first.close()
    second = backend.open()  # runs upgrade again: nothing to do
    engine = second._engine
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert context.get_current_revision() == "0001"
        assert compare_metadata(context, Base.metadata) == []
        tables = set(sa.inspect(conn).get_table_names())
    assert {"events", "outbox", VERSION_TABLE} <= tables
    if backend.name == "sqlite":
        mode = sqlite3.connect(backend.data_dir / "vad.db").execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_migrations_ship_in_the_wheel(tmp_path: Path) -> None:
    """The migrations are data, not a package: pyproject's package-data must put them in the wheel."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[2]
    app = tmp_path / "app"
    for name in ("pyproject.toml", "README.md"):
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, app / name)
    for package in ("model", "service"):
        shutil.copytree(root / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "--wheel-dir", str(tmp_path / "wheel"), str(app)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = root / "service" / "store" / "migrations"
    needed = {p.relative_to(root).as_posix() for p in migrations.rglob("*") if p.suffix in (".py", ".mako")}
    assert "service/store/migrations/env.py" in needed and needed <= names


# --- outages, the queue bound, secrets ----------------------------------------------------------


def test_database_outage_queues_changes_and_writes_them_when_back(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = backend.open(statement_timeout_s=0.2)
    first = make_event(1)
    store.submit(start(first), [("mqtt", "start-1")])
    assert store.flush()

    with backend.outage():
        store.submit(end(first), [("mqtt", "end-1")])
        wait_for(lambda: not store.database_up)
        later = [make_event(n) for n in range(2, 42)]
        submitted = time.monotonic()
        for record in later:
            store.submit(start(record), [("mqtt", f"start-{record.id}")])
            store.submit(end(record), [("mqtt", f"end-{record.id}")])
        assert time.monotonic() - submitted < 1.0  # submit() never waits for the database
        assert store.queued() == 81
        time.sleep(0.5)  # several retries: still one log line for this outage
        assert store.queued() == 81 and not store.database_up
        assert store.depth() == 1  # the gauge never waits for (or fails with) the database
        # A queued event is readable from the queue even now.
        assert store.get(later[-1].id) == end(later[-1]).event
        if backend.name == "postgresql":
            with pytest.raises(StoreUnavailable, match="unavailable"):
                store.list(EventQuery())

    assert store.flush(timeout_s=20)
    assert store.database_up and store.queued() == 0 and store.dropped == 0 and store.write_errors == 0
    wait_for(lambda: any("reachable again" in r.getMessage() for r in caplog.records))
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    back_lines = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(outage_lines) == 1 and len(back_lines) == 1
    assert store.outages == 1

    records, _ = store.list(EventQuery(limit=100))
    assert len(records) == 41 and all(not r.open for r in records)
    payloads = [n.payload for n in store.due("mqtt", time.time(), 1000)]
    assert len(payloads) == len(set(payloads)) == 82  # nothing lost, nothing twice
    assert store.depth() == 82


def test_write_queue_drops_the_oldest_and_counts(backend: Backend) -> None:
    store = backend.open(write_queue=10, statement_timeout_s=0.2)
    with backend.outage():
        store.submit(start(make_event(1000)))
        wait_for(lambda: not store.database_up)
        records = [make_event(n) for n in range(1, 31)]
        for record in records:
            store.submit(end(record), [("mqtt", record.id)])
        assert store.queued() == 10 and store.dropped == 21
    assert store.flush(timeout_s=20)
    kept = {r.id for r in store.list(EventQuery(limit=100))[0]}
    assert len(kept) == 10 and store.dropped == 21
    # The newest always survive; at most one batch in flight (half the bound) may be older ones.
    assert {r.id for r in records[-5:]} <= kept
    assert store.depth() == len(kept - {make_event(1000).id})


def test_close_writes_what_is_queued(backend: Backend) -> None:
    store = backend.open()
    for n in range(1, 21):
        store.submit(end(make_event(n)))
    store.close(timeout_s=10)
    assert store.dropped == 0
    store.submit(start(make_event(99)))  # after close: dropped and counted, never raised
    assert store.dropped == 1
    assert len(backend.open().list(EventQuery(limit=100))[0]) == 20


def test_password_never_reaches_logs_or_errors(postgres: PostgresServer, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [PASSWORD, "pg-S3cret%2FPa%3Ass%25word", "Wrong-Secret-123"]
    messages: list[str] = []

    with pytest.raises(StoreUnavailable) as refused:
        EventStore.open(postgres.url_for("vad", password="Wrong-Secret-123"), tmp_path, **FAST)
    messages.append(str(refused.value))
    assert "password authentication failed" in str(refused.value)
    with pytest.raises(InvalidDatabaseUrl) as bad_scheme:
        EventStore.open(f"mysql://vad:{PASSWORD}@db/vad", tmp_path)
    messages.append(str(bad_scheme.value))

    store = EventStore.open(postgres.create_database(), tmp_path, **FAST)
    try:
        assert PASSWORD not in store.url and "***" in store.url
        postgres.stop()
        try:
            store.submit(start(make_event(1)))
            wait_for(lambda: not store.database_up)
            with pytest.raises(StoreUnavailable) as down:
                store.list(EventQuery())
            messages.append(str(down.value))
            with pytest.raises(StoreUnavailable) as down_open:
                EventStore.open(postgres.url, tmp_path, **FAST)
            messages.append(str(down_open.value))
        finally:
            postgres.start()
        assert store.flush(timeout_s=20)
    finally:
        store.close()

    text = "\n".join(messages + [r.getMessage() for r in caplog.records] + [caplog.text])
    assert "unreachable" in text
    for secret in secrets:
        assert secret not in text


def test_open_waits_for_a_database_that_is_starting(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database()
    postgres.stop()
    starter = threading.Timer(1.0, postgres.start)
    starter.start()
    try:
        store = EventStore.open(url, tmp_path, connect_wait_s=20, **FAST)
    finally:
        starter.join()
    try:
        assert store.database_up and store.list(EventQuery()) == ([], None)
    finally:
        store.close()


def test_bad_urls_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatabaseUrl, match="sqlite:///PATH"):
        EventStore.open("oracle://x@y/z", tmp_path)
    with pytest.raises(InvalidDatabaseUrl, match="not :memory:"):
        EventStore.open("sqlite://", tmp_path)
    with pytest.raises(InvalidDatabaseUrl, match="cannot be parsed"):
        EventStore.open("::::", tmp_path)


def test_concurrent_readers_and_writer(backend: Backend) -> None:
    """The API's thread pool reads while the inference thread submits: no errors, everything written."""
    store = backend.open()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                store.list(EventQuery(limit=20))
                store.stats()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for n in range(1, 201):
        store.submit(start(make_event(n)))
        store.submit(end(make_event(n)), [("mqtt", str(n))])
    assert store.flush(timeout_s=30)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.stats()["events"] == 200 and store.depth() == 200
