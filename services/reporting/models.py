"""Tables owned by the reporting service: read models built from other services' events only.

- Roster (`rpt_schools`, `rpt_teachers`, `rpt_groups`, `rpt_alliance_members`, `rpt_districts`): who
  exists, so teachers who did nothing are counted too. A row remembers the (time, id) of the event
  it reflects; an older event never overwrites a newer one, so arrival order does not matter.
- `rpt_activity_facts`: one row per activity statement (what it counted); corrections and hiding
  flip `counted`, and a term redefinition rebuilds the tallies from here.
- `rpt_tallies`: one wide row per (subject, id, period) with one column per quantity a rule can ask
  for (all activities, and per activity kind its count, online count, time and online time in seconds), so a
  report reads one or two rows per teacher instead of summing many (period, kind) rows. Periods:
  `M2025-03` month, `W2025-10` ISO week (schools), `T<term>` term, and `T<term>@2025-04`, the term to
  date at the end of April (teachers), which makes a month's pro-rata term judgement a single row.
  Updated by adding deltas; sums commute, so out-of-order delivery within a period gives the same numbers.
- `rpt_voided_statements`: statements hidden or corrected before they arrived (out of order).
- `processed_events`: event ids already applied (idempotent consumers).
- `rpt_projection_state`: per source service, the time of the newest event applied (reports' "as of").
- `rpt_rule_sets`: quota rule sets, one row per version.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from services.common.events import Outbox
from services.common.subscriber import ProcessedEvents
from services.reporting.kinds import MEASURE_COLUMNS

metadata = MetaData()
outbox = Outbox("reporting", metadata)
processed_events = ProcessedEvents(metadata)

districts = Table(
    "rpt_districts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("bureau_id", Integer, nullable=False),
    Column("name", String(200), nullable=False),
)

schools = Table(
    "rpt_schools", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("bureau_id", Integer, nullable=False, index=True),
    Column("district_id", Integer, index=True),
    Column("code", String(40), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
)

alliance_members = Table(
    "rpt_alliance_members", metadata,
    Column("alliance_id", Integer, primary_key=True, autoincrement=False),
    Column("school_id", Integer, primary_key=True, autoincrement=False),
    Column("alliance_name", String(200)),
)

groups = Table(
    "rpt_groups", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("bureau_id", Integer, nullable=False),
    Column("school_id", Integer, index=True),
    Column("kind", String(20), nullable=False),
    Column("name", String(200), nullable=False),
    Column("subject", String(60)),
    Column("grade", String(60)),
)

teachers = Table(
    "rpt_teachers", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("bureau_id", Integer, nullable=False, index=True),
    Column("district_id", Integer),
    Column("school_id", Integer, nullable=False, index=True),
    Column("staff_number", String(40), nullable=False),
    Column("subject", String(60)),
    Column("grade", String(60)),
    Column("active", Boolean, nullable=False),
    Column("roles", String(300), nullable=False),  # comma-separated, sorted
    Column("group_ids", Text, nullable=False),  # comma-separated, sorted
    Column("as_of_time", DateTime(timezone=True), nullable=False),
    Column("as_of_event", String(64), nullable=False),
)

activity_facts = Table(
    "rpt_activity_facts", metadata,
    Column("event_id", String(64), primary_key=True),
    Column("bureau_id", Integer, nullable=False),
    Column("teacher_id", Integer, nullable=False, index=True),
    Column("school_id", Integer, nullable=False),
    Column("group_id", Integer),
    Column("kind", String(60), nullable=False),
    Column("online", Boolean, nullable=False),
    # The recorded time in seconds (exact for minutes and for hundredths of an hour): integer sums
    # are exact in any order. What it credits is decided by the rule set when judging (kinds.py).
    Column("seconds", Integer, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("local_date", Date, nullable=False),
    Column("corrects", String(64)),
    Column("counted", Boolean, nullable=False),
)

voided_statements = Table(
    "rpt_voided_statements", metadata,
    Column("statement_id", String(64), primary_key=True),
    Column("reason", String(20), nullable=False),  # "hidden" | "corrected"
)

tallies = Table(
    "rpt_tallies", metadata,
    Column("subject", String(8), primary_key=True),  # teacher | group | school
    Column("subject_id", Integer, primary_key=True, autoincrement=False),
    Column("period", String(64), primary_key=True),  # M2025-03 | W2025-10 | T<term> | T<term>@2025-03
    *(Column(name, Integer, nullable=False, server_default="0") for name in MEASURE_COLUMNS),
    Index("ix_rpt_tallies_period_subject", "period", "subject"),
)

# What the read models include, per source service: the time of the newest event applied ("as of").
projection_state = Table(
    "rpt_projection_state", metadata,
    Column("source", String(40), primary_key=True),
    Column("newest_event_time", DateTime(timezone=True), nullable=False),
    Column("events_applied", BigInteger, nullable=False, server_default="0"),
)

rule_sets = Table(
    "rpt_rule_sets", metadata,
    Column("bureau_id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("scope_kind", String(10), nullable=False),
    Column("scope_id", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
