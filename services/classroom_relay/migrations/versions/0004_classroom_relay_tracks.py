"""tracks per classroom and session member, senders per track, interactive sessions, media time

Revision ID: 0004_classroom_relay
Revises: 0003_classroom_relay
Create Date: 2026-11-29 23:55:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_classroom_relay"
down_revision = "0003_classroom_relay"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("classrooms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tracks", sa.JSON(), nullable=True))
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("interactive", sa.Boolean(), nullable=False, server_default=sa.true()))
    # Sessions before tracks: the master sent one camera; a branch sent its camera back when return_bps > 0.
    op.execute("UPDATE sessions SET interactive = (return_bps > 0)")
    with op.batch_alter_table("session_classrooms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slot", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("tracks", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("senders", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("media_seconds", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("media_bytes", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("media_checked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_column("sender_host")
        batch_op.drop_column("sender_port")
        batch_op.drop_column("sender_token")
    # Existing members keep a stable order: the master first, branches by classroom id.
    op.execute("UPDATE session_classrooms SET slot = CASE WHEN role = 'master' THEN 0 ELSE classroom_id END")
    op.execute(
        "UPDATE session_classrooms SET tracks = '[{\"track\": \"camera\", \"kind\": \"video\", \"source\": \"camera\", "
        "\"codec\": \"h264\", \"payload_type\": 96, \"clock_rate\": 90000, \"channels\": 0, \"config\": null, "
        "\"bps\": 3000000, \"layers_bps\": [3000000]}]' WHERE role = 'master' OR return_bps > 0"
    )


def downgrade() -> None:
    with op.batch_alter_table("session_classrooms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sender_token", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("sender_port", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sender_host", sa.String(length=64), nullable=True))
        for column in ("media_checked_at", "media_bytes", "media_seconds", "senders", "tracks", "slot"):
            batch_op.drop_column(column)
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("interactive")
    with op.batch_alter_table("classrooms", schema=None) as batch_op:
        batch_op.drop_column("tracks")
