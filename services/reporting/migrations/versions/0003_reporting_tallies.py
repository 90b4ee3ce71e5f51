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
from sqlalchemy.orm import Session

from services.reporting.kinds import MEASURE_COLUMNS

revision = '0003_reporting'
down_revision = '0002_reporting'
branch_labels = None
depends_on = None


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
    # Imported here, not at the top: the projection is today's code, needed only for the backfill.
    from services.reporting import projection

    with Session(bind=op.get_bind()) as session:
        projection.rebuild_tallies(session)
        session.flush()
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
