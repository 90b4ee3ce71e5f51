"""Reporting benchmark: a fictional city in PostgreSQL, the monthly bulletin from the read models
versus a straightforward GROUP BY over the raw activity rows.

    .venv/bin/python bench/reporting_bench.py --teachers 30000 --activities 3000000

Generates schools, groups and teachers (with the roles the preset quota rules name) and a term of activities, COPYs the
activity facts in large chunks with their indexes dropped (rebuilt once at the end), derives the raw
table and the tallies in SQL, and checks those tallies against the service's own projection
(`projection.fold`) for a sample of teachers, groups and schools. Then times: the city's monthly
bulletin, one school's compliance report, and the per-teacher sums by GROUP BY over the raw rows.
Prints a figures table with the command, the ratios and the peak resident memory of this process.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.common import migrations
from services.common.progress import ProgressBar
from services.reporting import bulletin, compliance, projection, rules, views
from services.reporting.kinds import (
    ACTIVITY_KINDS,
    MEASURE_COLUMNS,
    count_column,
    online_count_column,
    online_seconds_column,
    seconds_column,
)
from services.reporting.models import activity_facts, tallies
from services.reporting.periods import Calendar, months_between

BUREAU = 1
TERM = {"code": "2025-spring", "name": "2025年春季学期", "starts_on": "2025-02-17", "ends_on": "2025-07-11"}
# Kind, weight, online?, hours (what a term of a city's activity roughly looks like).
KINDS = [
    ("online_course_study", 30, True, 2.0), ("offline_study", 15, False, 2.0), ("blog_post", 12, True, 0.5),
    ("comment", 15, True, 0.0), ("lesson_observation", 14, False, 1.0), ("collective_lesson_prep", 6, True, 1.5),
    ("small_research_topic", 2, False, 0.0), ("lecture", 3, False, 1.5), ("research_lesson", 3, False, 1.0),
]
CHUNK = 500_000  # rows per COPY: large enough that round trips do not matter, small enough for memory
SCHOOL_NAMES = ["青禾", "松涛", "云溪", "柳岸", "石泉", "枫林", "竹溪", "梅园", "桃源", "杏坛"]
FACT_COLUMNS = ["event_id", "bureau_id", "teacher_id", "school_id", "group_id", "kind", "online",
                "seconds", "occurred_at", "local_date", "counted"]
SAMPLE_TEACHERS = 40


def copy_text(connection: Any, table: str, columns: list[str], payload: str) -> None:
    with connection.cursor() as cursor:
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", io.StringIO(payload))


def copy_rows(connection: Any, table: str, columns: list[str], rows: list[tuple]) -> None:
    lines = ("\t".join("\\N" if value is None else str(value) for value in row) for row in rows)
    copy_text(connection, table, columns, "".join(line + "\n" for line in lines))


def generate_roster(connection: Any, schools: int, teachers: int, rng: random.Random) -> dict[str, list]:
    districts = max(1, schools // 25)
    copy_rows(connection, "rpt_districts", ["id", "bureau_id", "name"],
              [(d, BUREAU, f"第{d}片区") for d in range(1, districts + 1)])
    school_rows = [(s, BUREAU, (s - 1) % districts + 1, f"S{s:04d}", f"{SCHOOL_NAMES[s % 10]}第{s}学校", "ordinary")
                   for s in range(1, schools + 1)]
    copy_rows(connection, "rpt_schools", ["id", "bureau_id", "district_id", "code", "name", "kind"], school_rows)
    group_rows, groups_of_school = [], {}
    for school in range(1, schools + 1):
        ids = [school * 100 + index for index in range(6)]
        groups_of_school[school] = ids
        group_rows += [(gid, BUREAU, school, "research", f"教研组{gid}") for gid in ids]
    copy_rows(connection, "rpt_groups", ["id", "bureau_id", "school_id", "kind", "name"], group_rows)
    teacher_rows, teacher_school, teacher_group = [], [], []
    moment = datetime(2025, 2, 1, tzinfo=UTC).isoformat()
    for teacher in range(1, teachers + 1):
        school = rng.randint(1, schools)
        roll = rng.random()
        roles = ("principal" if roll < 0.02 else "middle_manager,teacher" if roll < 0.08
                 else "centre_member,teacher" if roll < 0.09 else "teacher")
        group = rng.choice(groups_of_school[school])
        teacher_rows.append((teacher, BUREAU, (school - 1) % districts + 1, school, f"T{teacher:06d}", "数学",
                             "七年级", "true", roles, str(group), moment, "bench"))
        teacher_school.append(school)
        teacher_group.append(group)
    copy_rows(connection, "rpt_teachers", ["id", "bureau_id", "district_id", "school_id", "staff_number", "subject",
                                           "grade", "active", "roles", "group_ids", "as_of_time", "as_of_event"],
              teacher_rows)
    return {"school": teacher_school, "group": teacher_group}


def generate_facts(connection: Any, roster: dict[str, list], count: int, rng: random.Random,
                   calendar: Calendar) -> None:
    """Activity facts as the projection would store them, written as COPY text in large chunks."""
    teachers = len(roster["school"])
    start = datetime(2025, 2, 17, tzinfo=calendar.timezone).astimezone(UTC)
    span = int((datetime(2025, 7, 12, tzinfo=calendar.timezone).astimezone(UTC) - start).total_seconds())
    kinds = [kind for kind, *_ in KINDS]
    weights = [weight for _, weight, *_ in KINDS]
    # Per kind, the COPY text that follows the school and group columns: kind, online, seconds.
    tails = {kind: f"{kind}\t{'t' if online else 'f'}\t{int(hours * 3600)}" for kind, _, online, hours in KINDS}
    # Local dates by the hour: the bureau's zone decides them once, not three million times.
    hours = span // 3600 + 1
    local_dates = [calendar.local_date(start + timedelta(hours=hour)).isoformat() for hour in range(hours)]
    school_of, group_of = roster["school"], roster["group"]
    null = "\\N"  # COPY's NULL (no backslash may stand inside an f-string's braces before Python 3.12)
    progress = ProgressBar(count, "activities")
    done = 0
    while done < count:
        size = min(CHUNK, count - done)
        lines = []
        for kind in rng.choices(kinds, weights, k=size):
            teacher = rng.randrange(teachers)
            offset = rng.randrange(span)
            grouped = kind == "collective_lesson_prep" or rng.random() < 0.3
            occurred = (start + timedelta(seconds=offset)).isoformat()
            lines.append(f"{rng.getrandbits(128):032x}\t{BUREAU}\t{teacher + 1}\t{school_of[teacher]}\t"
                         f"{group_of[teacher] if grouped else null}\t{tails[kind]}\t{occurred}\t"
                         f"{local_dates[offset // 3600]}\tt\n")
        copy_text(connection, "rpt_activity_facts", FACT_COLUMNS, "".join(lines))
        done += size
        progress.update(done)
    progress.close()


def _aggregates() -> list[str]:
    """Each tally column as an aggregate over fact rows, in MEASURE_COLUMNS order."""
    by_column = {"activities": "count(*)"}
    for kind in ACTIVITY_KINDS:
        by_column[count_column(kind)] = f"count(*) FILTER (WHERE kind = '{kind}')"
        by_column[online_count_column(kind)] = f"count(*) FILTER (WHERE kind = '{kind}' AND online)"
        by_column[seconds_column(kind)] = f"coalesce(sum(seconds) FILTER (WHERE kind = '{kind}'), 0)"
        by_column[online_seconds_column(kind)] = f"coalesce(sum(seconds) FILTER (WHERE kind = '{kind}' AND online), 0)"
    return [by_column[name] for name in MEASURE_COLUMNS]


def _measures(alias: str = "") -> str:
    """The tally columns as aggregates over fact rows (`alias` empty) or as sums of monthly rows."""
    if alias:
        return ", ".join(f"sum({alias}.{name})" for name in MEASURE_COLUMNS)
    return ", ".join(_aggregates())


def build_tallies_in_sql(connection: Any, calendar: Calendar) -> None:
    """The projection's tallies, computed set-wise (checked against `projection.fold` afterwards)."""
    term_case = " ".join(f"WHEN local_date BETWEEN '{term.starts_on}' AND '{term.ends_on}' THEN '{term.code}'"
                         for term in calendar.terms)
    term_months = ", ".join(f"('{term.code}', '{year:04d}-{month:02d}')" for term in calendar.terms
                            for year, month in months_between(term.starts_on, term.ends_on)) or "(NULL, NULL)"
    columns = ", ".join(["subject", "subject_id", "period", *MEASURE_COLUMNS])
    insert = f"INSERT INTO rpt_tallies ({columns}) "
    statements = [
        "CREATE TEMP TABLE bench_fact_periods AS SELECT *, to_char(local_date, 'YYYY-MM') AS month, "
        "to_char(local_date, 'IYYY-IW') AS week, " + (f"CASE {term_case} END" if term_case else "NULL::text")
        + " AS term FROM rpt_activity_facts WHERE counted",
        insert + f"SELECT 'teacher', teacher_id, 'M' || month, {_measures()} FROM bench_fact_periods "
        "GROUP BY teacher_id, month",
        insert + f"SELECT 'teacher', teacher_id, 'T' || term, {_measures()} FROM bench_fact_periods "
        "WHERE term IS NOT NULL GROUP BY teacher_id, term",
        insert + f"SELECT 'group', group_id, 'M' || month, {_measures()} FROM bench_fact_periods "
        "WHERE group_id IS NOT NULL GROUP BY group_id, month",
        insert + f"SELECT 'group', group_id, 'T' || term, {_measures()} FROM bench_fact_periods "
        "WHERE group_id IS NOT NULL AND term IS NOT NULL GROUP BY group_id, term",
        insert + f"SELECT 'school', school_id, 'W' || week, {_measures()} FROM bench_fact_periods "
        "GROUP BY school_id, week",
        # Term to date: each in-term month's sums added into its own and every later month of the term.
        "CREATE TEMP TABLE bench_term_months AS SELECT teacher_id, term, month, "
        + ", ".join(f"{aggregate} AS {name}" for aggregate, name in zip(_aggregates(), MEASURE_COLUMNS, strict=True))
        + " FROM bench_fact_periods WHERE term IS NOT NULL GROUP BY teacher_id, term, month",
        insert + f"SELECT 'teacher', m.teacher_id, 'T' || m.term || '@' || through.month, {_measures('m')} "
        f"FROM bench_term_months m JOIN (VALUES {term_months}) AS through(term, month) "
        "ON through.term = m.term AND through.month >= m.month GROUP BY m.teacher_id, m.term, through.month",
    ]
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
        cursor.execute("DROP TABLE bench_fact_periods, bench_term_months")


def check_tallies(engine: Engine, rng: random.Random, teachers: int) -> int:
    """The SQL-built tallies equal `projection.fold` over the same facts, for sampled subjects."""
    sample = sorted(rng.sample(range(1, teachers + 1), min(SAMPLE_TEACHERS, teachers)))
    checked = 0
    with Session(engine) as session:
        calendar_of = projection.CalendarCache(session)
        for subject, column, ids in [("teacher", activity_facts.c.teacher_id, sample),
                                     ("school", activity_facts.c.school_id, [1, 2]),
                                     ("group", activity_facts.c.group_id, [101, 102])]:
            rows = session.execute(select(activity_facts).where(column.in_(ids))).mappings()
            expected = {key: {name: sums.get(name, 0) for name in MEASURE_COLUMNS}
                        for key, sums in projection.fold((projection.fact_of_row(row) for row in rows),
                                                         calendar_of).items()
                        if key[0] == subject and key[1] in ids}
            stored = {(row["subject"], row["subject_id"], row["period"]): {name: row[name] for name in MEASURE_COLUMNS}
                      for row in session.execute(select(tallies).where(
                          tallies.c.subject == subject, tallies.c.subject_id.in_(ids))).mappings()}
            if stored != expected:
                wrong = sorted(key for key in set(stored) | set(expected) if stored.get(key) != expected.get(key))[:3]
                raise SystemExit(f"tallies built in SQL differ from the projection's for {subject}s: {wrong}")
            checked += len(stored)
    return checked


@contextmanager
def indexes_dropped(engine: Engine) -> Iterator[None]:
    """Load into bare tables, then build each index once (far cheaper than maintaining it per row)."""
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE rpt_activity_facts DROP CONSTRAINT rpt_activity_facts_pkey")
        connection.exec_driver_sql("DROP INDEX ix_rpt_activity_facts_teacher_id")
        connection.exec_driver_sql("ALTER TABLE rpt_tallies DROP CONSTRAINT rpt_tallies_pkey")
        connection.exec_driver_sql("DROP INDEX ix_rpt_tallies_period_subject")
    yield
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for statement in [
            "ALTER TABLE rpt_activity_facts ADD CONSTRAINT rpt_activity_facts_pkey PRIMARY KEY (event_id)",
            "CREATE INDEX ix_rpt_activity_facts_teacher_id ON rpt_activity_facts (teacher_id)",
            "ALTER TABLE rpt_tallies ADD CONSTRAINT rpt_tallies_pkey PRIMARY KEY (subject, subject_id, period)",
            "CREATE INDEX ix_rpt_tallies_period_subject ON rpt_tallies (period, subject)",
            "CREATE TABLE bench_raw_activities AS SELECT event_id, teacher_id, school_id, group_id, kind, online, "
            "seconds, occurred_at FROM rpt_activity_facts",
            "ALTER TABLE bench_raw_activities ADD PRIMARY KEY (event_id)",
            "CREATE INDEX ON bench_raw_activities (occurred_at)",
            "CREATE INDEX ON bench_raw_activities (school_id)",
            "VACUUM ANALYZE",
        ]:
            connection.exec_driver_sql(statement)


RAW_GROUP_BY = """
SELECT teacher_id,
       sum(seconds) FILTER (WHERE online AND occurred_at >= :month_start AND occurred_at < :month_end),
       sum(seconds) FILTER (WHERE NOT online AND occurred_at >= :month_start AND occurred_at < :month_end),
       sum(seconds) FILTER (WHERE online), sum(seconds) FILTER (WHERE NOT online),
       count(*) FILTER (WHERE kind = 'blog_post'), count(*) FILTER (WHERE kind = 'lesson_observation')
FROM bench_raw_activities
WHERE occurred_at >= :term_start AND occurred_at < :month_end {school}
GROUP BY teacher_id
"""


def timed(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def phase(label: str, started: float) -> float:
    now = time.perf_counter()
    print(f"- {label}: {now - started:.1f} s", flush=True)
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schools", type=int, default=500)
    parser.add_argument("--teachers", type=int, default=30_000)
    parser.add_argument("--activities", type=int, default=3_000_000)
    parser.add_argument("--month", default="2025-04")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/lianxiao_bench_reporting")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    command = shlex.join(["bench/reporting_bench.py", *sys.argv[1:]])

    print(f"city: {args.schools} schools, {args.teachers} teachers, {args.activities} activities in a term")
    started = step = time.perf_counter()
    migrations.drop_database(args.database_url)
    migrations.upgrade("reporting", args.database_url)
    engine = create_engine(args.database_url)
    with Session(engine) as session, session.begin():
        rules.save(session, BUREAU, {**rules.PRESET, "terms": [TERM]}, now=datetime(2025, 1, 1, tzinfo=UTC))
        calendar = rules.in_force(session, BUREAU).calendar
    with indexes_dropped(engine):
        raw_connection = engine.raw_connection()
        try:
            roster = generate_roster(raw_connection, args.schools, args.teachers, rng)
            generate_facts(raw_connection, roster, args.activities, rng, calendar)
            step = phase("generate + COPY facts", step)
            build_tallies_in_sql(raw_connection, calendar)
            raw_connection.commit()
        finally:
            raw_connection.close()
        step = phase("tallies in SQL", step)
    step = phase("indexes, raw table, VACUUM ANALYZE", step)
    checked = check_tallies(engine, rng, args.teachers)
    phase(f"tallies equal projection.fold ({checked} sampled rows)", step)
    load_seconds = time.perf_counter() - started
    with engine.connect() as connection:
        tally_rows = connection.scalar(text("SELECT count(*) FROM rpt_tallies"))
    print(f"generated and loaded in {load_seconds:.1f} s ({tally_rows} tally rows)")

    with Session(engine) as session:
        rule_set = rules.in_force(session, BUREAU)
    month = rule_set.calendar.month(args.month)
    zone = rule_set.calendar.timezone
    bounds = {
        "month_start": datetime.combine(month.starts_on, datetime.min.time(), zone),
        "month_end": datetime.combine(month.ends_on + timedelta(days=1), datetime.min.time(), zone),
        "term_start": datetime.combine(month.term.starts_on if month.term else date.min, datetime.min.time(), zone),
    }
    school_id = 1
    with Session(engine) as session:
        bulletin_time, report = timed(lambda: bulletin.build(session, BUREAU, "month", args.month), args.repeat)
        school_time, _ = timed(lambda: views.school_report(
            compliance.evaluate(session, BUREAU, month, rule_set, [school_id]), school_id), args.repeat)
        raw_time, raw_rows = timed(lambda: session.execute(text(RAW_GROUP_BY.format(school="")), bounds).all(),
                                   args.repeat)
        raw_school_time, _ = timed(lambda: session.execute(
            text(RAW_GROUP_BY.format(school="AND school_id = :school")), {**bounds, "school": school_id}).all(),
            args.repeat)
    engine.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"figures — {command} (median of {args.repeat})")
    print(f"{'measure':<58} {'seconds':>9} {'raw/read':>9}")
    print(f"{'monthly bulletin ' + args.month + ' (read models, incl. previous month)':<58} {bulletin_time:>9.3f}"
          f" {raw_time / bulletin_time:>8.2f}×")
    print(f"{'raw GROUP BY, per-teacher sums only (no judging)':<58} {raw_time:>9.3f}")
    print(f"{'one school compliance report (read models)':<58} {school_time:>9.4f}"
          f" {raw_school_time / school_time:>8.2f}×")
    print(f"{'raw GROUP BY for that school':<58} {raw_school_time:>9.4f}")
    print(f"{'generate + load':<58} {load_seconds:>9.1f}")
    print(f"{'peak resident memory of this process (MB, budget 2048)':<58} {peak_mb:>9.0f}")
    print(f"bulletin: {report['city']['schools']} schools, {report['city']['teachers']} teachers, "
          f"{len(report['lagging_schools'])} lagging; raw GROUP BY returned {len(raw_rows)} teachers; "
          f"goal ≤ 2 s: {'met' if bulletin_time <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
