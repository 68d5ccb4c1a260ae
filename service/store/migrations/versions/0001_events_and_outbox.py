"""events and outbox

Revision ID: 0001
Revises:
Create Date: 2025-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PENDING = "delivered_at IS NULL AND NOT given_up"


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("stream_name", sa.Text(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("start_frame", sa.Integer(), nullable=False),
        sa.Column("peak_score", sa.Double(), nullable=False),
        sa.Column("peak_frame", sa.Integer(), nullable=False),
        sa.Column("peak_at", sa.Double(), nullable=False),
        sa.Column("box_x", sa.Integer(), nullable=True),
        sa.Column("box_y", sa.Integer(), nullable=True),
        sa.Column("box_w", sa.Integer(), nullable=True),
        sa.Column("box_h", sa.Integer(), nullable=True),
        sa.Column("frames_above", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("end_frame", sa.Integer(), nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.Column("label", sa.String(32), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("snapshot_path", sa.Text(), nullable=True),
        sa.Column("clean_snapshot_path", sa.Text(), nullable=True),
        sa.Column("clip_path", sa.Text(), nullable=True),
        sa.Column("media_bytes", sa.Integer(), nullable=False),
        sa.Column("media_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_stream_id_started_at", "events", ["stream_id", "started_at"])
    op.create_index("ix_events_started_at", "events", ["started_at"])
    op.create_index("ix_events_label", "events", ["label"])
    op.create_index("ix_events_peak_score", "events", ["peak_score"])

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("change_id", sa.String(32), nullable=False),
        sa.Column("receiver", sa.String(), nullable=False),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Double(), nullable=False),
        sa.Column("delivered_at", sa.Double(), nullable=True),
        sa.Column("given_up", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("uq_outbox_change_id_receiver", "outbox", ["change_id", "receiver"], unique=True)
    op.create_index(
        "ix_outbox_due", "outbox", ["receiver", "next_attempt_at"],
        sqlite_where=sa.text(PENDING), postgresql_where=sa.text(PENDING),
    )
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])
    op.create_index("ix_outbox_event_id", "outbox", ["event_id"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("events")
