"""Reporting benchmark: a fictional city in PostgreSQL, the monthly bulletin from the read models
versus a straightforward GROUP BY over the raw activity rows.

    .venv/bin/python bench/reporting_bench.py --teachers 30000 --activities 3000000

Generates schools, groups and teachers (roles as in the documents) and a term of activities, loads
the raw rows and the read models (counters folded with the service's own `projection.counter_deltas`)
with COPY, then times: the city's monthly bulletin, one school's compliance report, and the same
per-teacher sums computed by GROUP BY over the raw rows. Prints peak resident memory of this process.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from services.common import migrations
from services.common.progress import ProgressBar
from services.reporting import bulletin, compliance, projection, rules
from services.reporting.periods import Calendar

BUREAU = 1
TERM = {"code": "2025-spring", "name": "2025年春季学期", "starts_on": "2025-02-17", "ends_on": "2025-07-11"}
# Kind, weight, online?, hours (what a term of a city's activity roughly looks like).
KINDS = [
    ("online_course_study", 30, True, 2.0), ("offline_study", 15, False, 2.0), ("blog_post", 12, True, 0.5),
    ("comment", 15, True, 0.0), ("lesson_observation", 14, False, 1.0), ("collective_lesson_prep", 6, True, 1.5),
    ("small_research_topic", 2, False, 0.0), ("lecture", 3, False, 1.5), ("research_lesson", 3, False, 1.0),
]
CHUNK = 100_000
SCHOOL_NAMES = ["青禾", "松涛", "云溪", "柳岸", "石泉", "枫林", "竹溪", "梅园", "桃源", "杏坛"]


def copy_rows(connection: Any, table: str, columns: list[str], rows: list[tuple]) -> None:
    buffer = io.StringIO()
    for row in rows:
        buffer.write("\t".join("\\N" if value is None else str(value) for value in row))
        buffer.write("\n")
    buffer.seek(0)
    with connection.cursor() as cursor:
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)


def fresh_database(url: str) -> None:
    migrations.drop_database(url)
    migrations.upgrade("reporting", url)


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


def generate_activities(connection: Any, roster: dict[str, list], count: int, rng: random.Random,
                        calendar: Calendar) -> int:
    """Raw rows and facts by COPY in chunks; counters folded in memory, then COPYed once."""
    teachers = len(roster["school"])
    start = datetime(2025, 2, 17, tzinfo=UTC) - timedelta(hours=8)
    span = int((datetime(2025, 7, 12, tzinfo=UTC) - start).total_seconds()) - 8 * 3600
    kinds = [kind for kind, *_ in KINDS]
    weights = [weight for _, weight, *_ in KINDS]
    detail = {kind: (online, hours) for kind, _, online, hours in KINDS}
    totals: dict[Any, list[int]] = {}
    progress = ProgressBar(count, "activities")
    done = 0
    while done < count:
        size = min(CHUNK, count - done)
        raw, facts = [], []
        for kind in rng.choices(kinds, weights, k=size):
            teacher = rng.randint(1, teachers)
            online, hours = detail[kind]
            centi = int(hours * 100)
            fact = projection.ActivityFact(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), bureau_id=BUREAU, teacher_id=teacher,
                school_id=roster["school"][teacher - 1],
                group_id=roster["group"][teacher - 1] if kind == "collective_lesson_prep" or rng.random() < 0.3
                else None,
                kind=kind, online=online, online_centihours=centi if online else 0,
                offline_centihours=0 if online else centi,
                occurred_at=start + timedelta(seconds=rng.randrange(span)),
            )
            occurred = fact.occurred_at.isoformat()
            raw.append((fact.event_id, teacher, fact.school_id, fact.group_id, kind, str(online).lower(),
                        fact.online_centihours, fact.offline_centihours, occurred))
            facts.append((fact.event_id, BUREAU, teacher, fact.school_id, fact.group_id, kind, str(online).lower(),
                          fact.online_centihours, fact.offline_centihours, occurred,
                          calendar.local_date(fact.occurred_at).isoformat(), "true"))
            for key, delta in projection.counter_deltas(fact, calendar):
                current = totals.get(key)
                if current is None:
                    totals[key] = list(delta)
                else:
                    for index in range(4):
                        current[index] += delta[index]
        copy_rows(connection, "bench_raw_activities", ["event_id", "teacher_id", "school_id", "group_id", "kind",
                                                       "online", "online_centihours", "offline_centihours",
                                                       "occurred_at"], raw)
        copy_rows(connection, "rpt_activity_facts", ["event_id", "bureau_id", "teacher_id", "school_id", "group_id",
                                                     "kind", "online", "online_centihours", "offline_centihours",
                                                     "occurred_at", "local_date", "counted"], facts)
        done += size
        progress.update(done)
    progress.close()
    rows = [(*key, *delta) for key, delta in totals.items()]
    copy_rows(connection, "rpt_counters", ["subject", "subject_id", "period", "kind", "count", "online_count",
                                           "online_centihours", "offline_centihours"], rows)
    return len(rows)


RAW_GROUP_BY = """
SELECT teacher_id,
       sum(online_centihours) FILTER (WHERE occurred_at >= :month_start AND occurred_at < :month_end),
       sum(offline_centihours) FILTER (WHERE occurred_at >= :month_start AND occurred_at < :month_end),
       sum(online_centihours), sum(offline_centihours),
       count(*) FILTER (WHERE kind = 'blog_post'), count(*) FILTER (WHERE kind = 'lesson_observation')
FROM bench_raw_activities
WHERE occurred_at >= :term_start AND occurred_at < :month_end {school}
GROUP BY teacher_id
"""


def timed(function: Any, repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


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

    print(f"city: {args.schools} schools, {args.teachers} teachers, {args.activities} activities in a term")
    started = time.perf_counter()
    fresh_database(args.database_url)
    engine = create_engine(args.database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE bench_raw_activities (event_id varchar(64) PRIMARY KEY, teacher_id int NOT NULL, "
            "school_id int NOT NULL, group_id int, kind varchar(60) NOT NULL, online boolean NOT NULL, "
            "online_centihours int NOT NULL, offline_centihours int NOT NULL, occurred_at timestamptz NOT NULL)")
    with Session(engine) as session, session.begin():
        rules.save(session, BUREAU, {**rules.PRESET, "terms": [TERM]}, now=datetime(2025, 1, 1, tzinfo=UTC))
        calendar = rules.in_force(session, BUREAU).calendar
    raw_connection = engine.raw_connection()
    try:
        roster = generate_roster(raw_connection, args.schools, args.teachers, rng)
        counters_written = generate_activities(raw_connection, roster, args.activities, rng, calendar)
        raw_connection.commit()
    finally:
        raw_connection.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("CREATE INDEX ON bench_raw_activities (occurred_at)")
        connection.exec_driver_sql("CREATE INDEX ON bench_raw_activities (school_id)")
        connection.exec_driver_sql("ANALYZE")
    print(f"generated and loaded in {time.perf_counter() - started:.1f} s ({counters_written} counter rows)")

    rule_set = rules.in_force(Session(engine), BUREAU)
    month = rule_set.calendar.month(args.month)
    tz = rule_set.calendar.timezone
    bounds = {
        "month_start": datetime.combine(month.starts_on, datetime.min.time(), tz),
        "month_end": datetime.combine(month.ends_on + timedelta(days=1), datetime.min.time(), tz),
        "term_start": datetime.combine(month.term.starts_on, datetime.min.time(), tz),
    }
    school_id = 1
    with Session(engine) as session:
        bulletin_time, report = timed(lambda: bulletin.build(session, BUREAU, "month", args.month), args.repeat)
        school_time, _ = timed(lambda: compliance.school_report(
            compliance.evaluate(session, BUREAU, month, rule_set, [school_id]), school_id), args.repeat)
        raw_time, raw_rows = timed(lambda: session.execute(text(RAW_GROUP_BY.format(school="")), bounds).all(),
                                   args.repeat)
        raw_school_time, _ = timed(lambda: session.execute(
            text(RAW_GROUP_BY.format(school="AND school_id = :school")), {**bounds, "school": school_id}).all(),
            args.repeat)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"monthly bulletin {args.month} (read models, incl. previous month for 'most improved'): "
          f"{bulletin_time:.3f} s — {report['city']['schools']} schools, {report['city']['teachers']} teachers, "
          f"{len(report['lagging_schools'])} lagging (goal ≤ 2 s)")
    print(f"raw GROUP BY over {args.activities} rows (per-teacher sums only, no judging): {raw_time:.3f} s "
          f"({len(raw_rows)} teachers) — ratio raw/read-model bulletin {raw_time / bulletin_time:.2f}×")
    print(f"one school's compliance report: {school_time * 1000:.1f} ms; raw GROUP BY for that school: "
          f"{raw_school_time * 1000:.1f} ms — ratio {raw_school_time / school_time:.2f}×")
    print(f"peak resident memory of this process: {peak_mb:.0f} MB (budget 2048 MB)")
    engine.dispose()


if __name__ == "__main__":
    main()
