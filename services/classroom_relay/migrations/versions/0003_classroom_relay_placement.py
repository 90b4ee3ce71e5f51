"""sessions placed on a data plane

Revision ID: 0003_classroom_relay
Revises: 0002_classroom_relay
Create Date: 2026-11-24 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_classroom_relay"
down_revision = "0002_classroom_relay"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dataplane", sa.String(length=63), nullable=True))
        batch_op.create_index(batch_op.f("ix_sessions_dataplane"), ["dataplane"], unique=False)
    # Before placement there was one data plane, which the single-address configuration still calls
    # "default": sessions live during the upgrade stay where they are.
    op.execute("UPDATE sessions SET dataplane = 'default' WHERE status = 'live'")


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_dataplane"))
        batch_op.drop_column("dataplane")
