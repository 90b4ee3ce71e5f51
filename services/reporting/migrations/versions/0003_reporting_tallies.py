"""wide tallies replace per-kind counters

Revision ID: 0003_reporting
Revises: 0002_reporting
Create Date: 2026-11-23 06:00:00

`rpt_counters` (one row per subject, period and activity kind) becomes `rpt_tallies` (one row per
subject and period, a column per quantity, plus term-to-date rows for teachers). The new rows are
rebuilt from `rpt_activity_facts`, which hold everything the counters were made of.
"""

import sqlalchemy as sa
from alembic import op

from services.reporting.kinds import ACTIVITY_KINDS

revision = '0003_reporting'
down_revision = '0002_reporting'
branch_labels = None
depends_on = None


# The tally columns of this revision (0004 replaces the hour columns with per-kind seconds).
MEASURE_COLUMNS = (
    "activities", "online_centihours", "offline_centihours",
    *(f"count_{kind}" for kind in ACTIVITY_KINDS), *(f"online_{kind}" for kind in ACTIVITY_KINDS),
)


def upgrade() -> None:
    op.create_table(
        'rpt_tallies',
        sa.Column('subject', sa.String(length=8), nullable=False),
        sa.Column('subject_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('period', sa.String(length=64), nullable=False),
        *(sa.Column(name, sa.Integer(), server_default='0', nullable=False) for name in MEASURE_COLUMNS),
        sa.PrimaryKeyConstraint('subject', 'subject_id', 'period'),
    )
    op.create_index('ix_rpt_tallies_period_subject', 'rpt_tallies', ['period', 'subject'], unique=False)
    # The rows are rebuilt from the facts by 0004 (with the facts' columns of today's code).
    op.drop_index('ix_rpt_counters_period_subject', table_name='rpt_counters')
    op.drop_table('rpt_counters')


def downgrade() -> None:
    # The per-kind counters come back empty: the previous release rebuilds them when its terms change.
    op.create_table(
        'rpt_counters',
        sa.Column('subject', sa.String(length=8), nullable=False),
        sa.Column('subject_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('period', sa.String(length=48), nullable=False),
        sa.Column('kind', sa.String(length=60), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('online_count', sa.Integer(), nullable=False),
        sa.Column('online_centihours', sa.Integer(), nullable=False),
        sa.Column('offline_centihours', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('subject', 'subject_id', 'period', 'kind'),
    )
    op.create_index('ix_rpt_counters_period_subject', 'rpt_counters', ['period', 'subject'], unique=False)
    op.drop_index('ix_rpt_tallies_period_subject', table_name='rpt_tallies')
    op.drop_table('rpt_tallies')
