"""projection state: the newest event applied per source (reports' "as of")

Revision ID: 0005_reporting_freshness
Revises: 0004_reporting
Create Date: 2026-11-29 23:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0005_reporting_freshness'
down_revision = '0004_reporting'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rpt_projection_state',
        sa.Column('source', sa.String(length=40), nullable=False),
        sa.Column('newest_event_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('events_applied', sa.BigInteger(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('source'),
    )


def downgrade() -> None:
    op.drop_table('rpt_projection_state')
