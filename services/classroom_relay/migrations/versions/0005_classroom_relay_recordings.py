"""recording per session (record, subject, grade) and the recordings of live occurrences

Revision ID: 0005_classroom_relay
Revises: 0004_classroom_relay
Create Date: 2026-11-30 02:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_classroom_relay"
down_revision = "0004_classroom_relay"
branch_labels = None
depends_on = None

RUNNING = sa.text("state = 'recording'")


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("record", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column("subject", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("grade", sa.String(length=32), nullable=True))
    # Recording is on by default for 专递课堂 and 名师课堂, off for online research (recordings.py).
    op.execute("UPDATE sessions SET record = (kind <> 'online_research')")
    op.create_table(
        "relay_recordings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("recorder", sa.String(length=63), nullable=False),
        sa.Column("media_host", sa.String(length=64), nullable=False),
        sa.Column("base_port", sa.Integer(), nullable=False),
        sa.Column("keep", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("recorder_state", sa.String(length=32), nullable=True),
        sa.Column("bureau_id", sa.Integer(), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("tracks", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.Column("last_segment_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gaps", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"],
                                name=op.f("fk_relay_recordings_session_id_sessions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_relay_recordings")),
    )
    op.create_index(op.f("ix_relay_recordings_session_id"), "relay_recordings", ["session_id"], unique=False)
    op.create_index(op.f("ix_relay_recordings_state"), "relay_recordings", ["state"], unique=False)
    op.create_index("uq_relay_recordings_running_session", "relay_recordings", ["session_id"], unique=True,
                    postgresql_where=RUNNING, sqlite_where=RUNNING)
    op.create_index("uq_relay_recordings_running_ports", "relay_recordings", ["recorder", "base_port"],
                    unique=True, postgresql_where=RUNNING, sqlite_where=RUNNING)


def downgrade() -> None:
    op.drop_table("relay_recordings")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        for column in ("grade", "subject", "record"):
            batch_op.drop_column(column)
