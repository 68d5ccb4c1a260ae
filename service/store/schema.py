"""The event database's tables (SQLAlchemy 2 typed declarative). The schema itself is created and changed
only by the Alembic migrations in migrations/versions/; tests check that these classes match them."""

from __future__ import annotations

from sqlalchemy import Boolean, Double, Index, Integer, MetaData, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names: migrations and the database agree on them on every dialect.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}
# An outbox row still to deliver (the partial index's condition; the same SQL on SQLite and PostgreSQL).
PENDING = "delivered_at IS NULL AND NOT given_up"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class EventRow(Base):
    """One EventRecord (service/eventtypes.py); enums stored as their string values."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    stream_id: Mapped[str] = mapped_column(String)
    stream_name: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String)
    started_at: Mapped[float] = mapped_column(Double)
    start_frame: Mapped[int] = mapped_column(Integer)
    peak_score: Mapped[float] = mapped_column(Double)
    peak_frame: Mapped[int] = mapped_column(Integer)
    peak_at: Mapped[float] = mapped_column(Double)
    box_x: Mapped[int | None] = mapped_column(Integer)
    box_y: Mapped[int | None] = mapped_column(Integer)
    box_w: Mapped[int | None] = mapped_column(Integer)
    box_h: Mapped[int | None] = mapped_column(Integer)
    frames_above: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[float] = mapped_column(Double)
    ended_at: Mapped[float | None] = mapped_column(Double)
    end_frame: Mapped[int | None] = mapped_column(Integer)
    end_reason: Mapped[str | None] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    snapshot_path: Mapped[str | None] = mapped_column(Text)
    clean_snapshot_path: Mapped[str | None] = mapped_column(Text)
    clip_path: Mapped[str | None] = mapped_column(Text)
    # BigInteger would be wider, but one event's media stays far below 2 GiB (clips are capped).
    media_bytes: Mapped[int] = mapped_column(Integer, default=0)
    media_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_events_stream_id_started_at", "stream_id", "started_at"),
        Index("ix_events_started_at", "started_at"),
        Index("ix_events_label", "label"),
        Index("ix_events_peak_score", "peak_score"),
    )


class OutboxRow(Base):
    """One notification to one receiver. `change_id` + `receiver` is unique, so a transaction retried after
    an ambiguous commit (the connection died during COMMIT) cannot write a notification twice."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    change_id: Mapped[str] = mapped_column(String(32))
    receiver: Mapped[str] = mapped_column(String)
    event_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Double, default=0.0)
    delivered_at: Mapped[float | None] = mapped_column(Double)
    given_up: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (
        Index("uq_outbox_change_id_receiver", "change_id", "receiver", unique=True),
        # Due lookups and the depth gauge only look at pending rows: a partial index stays small.
        Index(
            "ix_outbox_due", "receiver", "next_attempt_at",
            sqlite_where=text(PENDING), postgresql_where=text(PENDING),
        ),
        Index("ix_outbox_created_at", "created_at"),
        Index("ix_outbox_event_id", "event_id"),
    )
