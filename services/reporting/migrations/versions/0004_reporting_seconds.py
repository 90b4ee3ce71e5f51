"""time in seconds, credits judged by the rule set

Revision ID: 0004_reporting
Revises: 0003_reporting
Create Date: 2026-11-29 23:10:00

Facts keep the recorded time in seconds instead of the hours activities credited (rounded to
0.01 h each, and crediting blog posts half an hour); tallies keep per kind its time and online time,
so the rule set in force decides what each kind credits (issue 14 item 4). Existing facts get their
time back from the hours they carried (exact for whole minutes; untimed kinds — posts, comments,
small topics — had no time of their own), then the tallies are rebuilt.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

from services.reporting.kinds import MEASURE_COLUMNS

revision = '0004_reporting'
down_revision = '0003_reporting'
branch_labels = None
depends_on = None

def upgrade() -> None:
    with op.batch_alter_table('rpt_activity_facts') as batch:
        batch.add_column(sa.Column('seconds', sa.Integer(), server_default='0', nullable=False))
    op.execute(sa.text(
        "UPDATE rpt_activity_facts SET seconds = (online_centihours + offline_centihours) * 36 "
        "WHERE kind NOT IN ('blog_post', 'comment', 'small_research_topic')"))
    with op.batch_alter_table('rpt_activity_facts') as batch:
        batch.drop_column('online_centihours')
        batch.drop_column('offline_centihours')
    op.drop_index('ix_rpt_tallies_period_subject', table_name='rpt_tallies')
    op.drop_table('rpt_tallies')
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


def downgrade() -> None:
    # Hours come back from seconds as activities credited them (untimed kinds: none); tallies are
    # left for the previous release to rebuild when its terms change.
    with op.batch_alter_table('rpt_activity_facts') as batch:
        batch.add_column(sa.Column('online_centihours', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('offline_centihours', sa.Integer(), server_default='0', nullable=False))
    op.execute(sa.text("UPDATE rpt_activity_facts SET online_centihours = seconds / 36 WHERE online"))
    op.execute(sa.text("UPDATE rpt_activity_facts SET offline_centihours = seconds / 36 WHERE NOT online"))
    with op.batch_alter_table('rpt_activity_facts') as batch:
        batch.drop_column('seconds')
