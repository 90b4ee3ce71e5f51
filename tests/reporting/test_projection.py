from __future__ import annotations

import random
from decimal import Decimal

import pytest
from sqlalchemy import select

from services.reporting import projection, rules
from services.reporting.exceptions import InvalidInput
from services.reporting.models import activity_facts, metadata, tallies, teachers
from tests.reporting.conftest import BUREAU, SPRING_TERM, CityEvents, small_city


def apply_all(session, events) -> None:
    for item in events:
        with session.begin():
            projection.apply_event(session, item.routing_key, item.body, item.attributes)


def tally_of(session, subject, subject_id, period):
    row = session.execute(select(tallies).where(
        tallies.c.subject == subject, tallies.c.subject_id == subject_id, tallies.c.period == period,
    )).mappings().first()
    return dict(row) if row else None


def busy_city() -> CityEvents:
    city = small_city()
    city.activity(101, 11, "online_course_study", "2025-03-03T09:00:00+08:00", online=Decimal("2.5"), group_id=501)
    wrong = city.activity(101, 11, "offline_study", "2025-03-04T09:00:00+08:00", offline=Decimal("3"))
    city.activity(101, 11, "offline_study", "2025-03-04T09:00:00+08:00", offline=Decimal("4"), corrects=wrong)
    post = city.activity(102, 11, "blog_post", "2025-03-05T20:00:00+08:00", online=Decimal("0.5"))
    city.hide(post)
    city.activity(102, 11, "blog_post", "2025-04-01T00:30:00+08:00", online=Decimal("0.5"))
    city.activity(103, 11, "collective_lesson_prep", "2025-03-10T15:00:00+08:00", online=Decimal("1.5"),
                  group_id=501)
    city.teacher(103, 11, 1, roles=["middle_manager"], routing_key="teacher.changed", time="2025-03-01T00:00:00Z")
    city.teacher(104, 11, 1, routing_key="teacher.left", active=False, time="2025-03-02T00:00:00Z")
    return city


def test_an_activity_counts_in_month_term_week_for_teacher_school_and_group(session):
    rules.save(session, BUREAU, {**rules.PRESET, "terms": [SPRING_TERM]})
    session.commit()
    city = small_city()
    city.activity(101, 11, "online_course_study", "2025-03-03T09:00:00+08:00", online=Decimal("2.5"), group_id=501)
    apply_all(session, city.events)
    # The term to date: March's row and every later month's of the term (through July), not February's.
    term_to_date = [f"T2025-spring@2025-{month:02d}" for month in range(3, 8)]
    for subject, subject_id, period in [("teacher", 101, "M2025-03"), ("teacher", 101, "T2025-spring"),
                                        *[("teacher", 101, key) for key in term_to_date],
                                        ("school", 11, "W2025-10"), ("group", 501, "M2025-03")]:
        row = tally_of(session, subject, subject_id, period)
        assert (row["activities"], row["count_online_course_study"], row["online_online_course_study"],
                row["online_seconds_online_course_study"], row["count_blog_post"]) == (1, 1, 1, 9000, 0), \
            (subject, period)
    assert tally_of(session, "teacher", 101, "T2025-spring@2025-02") is None
    assert tally_of(session, "teacher", 101, "W2025-10") is None  # weeks are kept for schools only


def test_redelivery_changes_nothing(session):
    city = small_city()
    city.activity(101, 11, "offline_study", "2025-03-03T09:00:00+08:00", offline=Decimal("2"))
    apply_all(session, city.events)
    with session.begin():
        assert projection.apply_event(session, city.events[-1].routing_key, city.events[-1].body,
                                      city.events[-1].attributes) is False
    assert tally_of(session, "teacher", 101, "M2025-03")["seconds_offline_study"] == 7200


def test_corrections_and_hiding_stop_counting_even_when_they_arrive_first(session):
    city = busy_city()
    activity_events = [item for item in city.events if item.routing_key.startswith("activity.")]
    roster = [item for item in city.events if not item.routing_key.startswith("activity.")]
    apply_all(session, roster + list(reversed(activity_events)))  # corrections and the hiding come first
    march = tally_of(session, "teacher", 101, "M2025-03")
    assert (march["seconds_offline_study"], march["count_offline_study"]) == (4 * 3600, 1)
    assert tally_of(session, "teacher", 102, "M2025-03") is None  # hidden: no empty row is left behind
    # 00:30 on 1 April in Shanghai is April, though it is still 31 March in UTC.
    assert tally_of(session, "teacher", 102, "M2025-04")["count_blog_post"] == 1


def test_an_older_teacher_event_never_overwrites_a_newer_one(session):
    city = busy_city()
    changed = [item for item in city.events if item.routing_key in ("teacher.changed", "teacher.left")]
    joined = [item for item in city.events if item.routing_key == "teacher.joined"]
    apply_all(session, changed + joined)
    roster = {row.id: row for row in session.execute(select(teachers))}
    assert roster[103].roles == "middle_manager" and roster[104].active is False


def test_malformed_activity_is_invalid_input(session):
    city = small_city()
    city.activity(101, 11, "blog_post", "2025-03-05T20:00:00+08:00", online=Decimal("0.5"))
    broken = city.events[-1]
    broken.body["actor"] = {"objectType": "Agent", "account": {"name": "robot/1"}}
    with pytest.raises(InvalidInput), session.begin():
        projection.apply_event(session, broken.routing_key, broken.body, broken.attributes)


def snapshot(session) -> dict[str, list]:
    """Every read-model table's rows (minus processing timestamps), sorted."""
    tables = {}
    for table in metadata.sorted_tables:
        if table.name in ("outbox",):
            continue
        columns = [column for column in table.columns if column.name not in ("processed_at",)]
        tables[table.name] = sorted(tuple(str(value) for value in row) for row in session.execute(select(*columns)))
    return tables


def test_a_rebuild_from_a_shuffled_replay_with_duplicates_equals_the_incremental_models(make_session):
    city = busy_city()
    rng = random.Random(20250301)
    for index in range(150):  # more activity, to make the comparison worth something
        teacher = rng.choice([101, 102, 103, 105, 106, 201, 202, 301])
        school = 11 if teacher < 200 else 12 if teacher < 300 else 21
        kind = rng.choice(["online_course_study", "offline_study", "lesson_observation", "blog_post"])
        hours = Decimal(rng.choice(["0.5", "1.25", "2"]))
        when = f"2025-{rng.choice([3, 4, 5]):02d}-{rng.randint(1, 28):02d}T1{index % 10}:00:00+08:00"
        city.activity(teacher, school, kind, when,
                      online=hours if kind != "offline_study" else Decimal(0),
                      offline=hours if kind == "offline_study" else Decimal(0),
                      group_id=501 if school == 11 and index % 3 == 0 else None)
    body = {**rules.PRESET, "terms": [SPRING_TERM]}

    incremental = make_session("incremental")
    rules.save(incremental, BUREAU, body)
    incremental.commit()
    apply_all(incremental, city.events)

    replayed = make_session("replayed")
    rules.save(replayed, BUREAU, body)
    replayed.commit()
    shuffled = city.events + rng.sample(city.events, 40)  # duplicates: redeliveries
    rng.shuffle(shuffled)
    apply_all(replayed, shuffled)

    rebuilt = make_session("rebuilt")
    rules.save(rebuilt, BUREAU, body)
    rebuilt.commit()
    apply_all(rebuilt, city.events)
    with rebuilt.begin():
        projection.rebuild_tallies(rebuilt)

    expected = snapshot(incremental)
    assert len(expected["rpt_tallies"]) > 100
    for other in (replayed, rebuilt):
        actual = snapshot(other)
        for name in expected:
            if name in ("rpt_rule_sets",):
                continue
            assert actual[name] == expected[name], name
    facts = incremental.execute(select(activity_facts.c.counted)).scalars().all()
    assert facts.count(False) == 2  # the corrected and the hidden statement
