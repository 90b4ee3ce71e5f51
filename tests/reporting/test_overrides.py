"""District and alliance rule overrides: each school is judged by the most specific rule set in force."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from services.reporting import bulletin, compliance, results, rules
from tests.reporting.conftest import BUREAU, SPRING_TERM, event, small_city
from tests.reporting.test_projection import apply_all
from tests.reporting.test_reports import TODAY, comply

BEFORE_TERM = datetime(2025, 1, 1, tzinfo=UTC)
AFTER_TERM = datetime(2025, 8, 1, tzinfo=UTC)


def stricter(online_minimum: float, label: str = "网络研修学时（片区）") -> dict:
    """The presets with a higher online-hours quota."""
    body = {**rules.PRESET, "terms": [SPRING_TERM]}
    body["rules"] = [{**rule, "minimum": online_minimum, "label": label} if rule["id"] == "online_hours" else rule
                     for rule in body["rules"]]
    return body


@pytest.fixture
def city_of_two_districts(session: Session) -> Session:
    """Teacher 201 (school 12, district 1) and 301 (school 21, district 2) both do 51.5 h online."""
    rules.save(session, BUREAU, {**rules.PRESET, "terms": [SPRING_TERM]}, now=BEFORE_TERM)
    session.commit()
    city = small_city()
    comply(city, 201, 12)
    comply(city, 301, 21)
    city.events.append(event("school.joined_alliance", {"alliance_id": 9, "school_id": 12, "lead": True}))
    city.events.append(event("school.joined_alliance", {"alliance_id": 9, "school_id": 21, "lead": False}))
    city.events.append(event("school.joined_alliance", {"alliance_id": 4, "school_id": 21, "lead": True}))
    apply_all(session, city.events)
    return session


def judged_in_term(session: Session) -> dict[int, results.TeacherResult]:
    rule_set = rules.in_force(session, BUREAU)
    evaluation = compliance.evaluate(session, BUREAU, rule_set.calendar.term("2025-spring"), rule_set, today=TODAY)
    return {teacher.teacher_id: teacher for school in evaluation.schools.values() for teacher in school.teachers}


def online_rule(teacher: results.TeacherResult) -> dict:
    return next(result for result in teacher.rules if result.rule_id == "online_hours").to_dict()


def test_a_district_override_raises_the_quota_only_in_that_district(city_of_two_districts: Session) -> None:
    session = city_of_two_districts
    assert judged_in_term(session)[301].compliant  # the bureau's 50 h
    rules.save(session, BUREAU, stricter(60), "district", 2, now=BEFORE_TERM)
    session.commit()
    teachers = judged_in_term(session)
    assert online_rule(teachers[301])["required"] == 60.0 and not teachers[301].compliant
    assert online_rule(teachers[201])["required"] == 50.0 and teachers[201].compliant  # district 1: the bureau's

    report = bulletin.build(session, BUREAU, "term", "2025-spring", today=TODAY)
    lines = {line["school_id"]: line for line in report["schools"]}
    assert (lines[21]["rules_scope"], lines[12]["rules_scope"]) == ("district", "bureau")
    assert lines[21]["rules_version"] == 2 and report["rules_version"] == 1
    lagging = {line["school_id"]: line for line in report["lagging_schools"]}
    assert "网络研修学时未达标 1 人" in lagging[21]["misses"]  # a shared rule id keeps the bureau's label
    assert 201 in [line["teacher_id"] for line in report["excellent_teachers"]]
    assert 301 not in [line["teacher_id"] for line in report["excellent_teachers"]]


def test_alliance_override_applies_where_no_district_one_does(city_of_two_districts: Session) -> None:
    session = city_of_two_districts
    rules.save(session, BUREAU, stricter(55), "alliance", 9, now=BEFORE_TERM)
    rules.save(session, BUREAU, stricter(52), "alliance", 4, now=BEFORE_TERM)
    session.commit()
    teachers = judged_in_term(session)
    assert online_rule(teachers[201])["required"] == 55.0  # school 12 is only in alliance 9
    assert online_rule(teachers[301])["required"] == 52.0  # school 21 is in 4 and 9: the lowest id wins
    rules.save(session, BUREAU, stricter(70), "district", 2, now=BEFORE_TERM)
    session.commit()
    assert online_rule(judged_in_term(session)[301])["required"] == 70.0  # the district's rules come first


def test_an_override_written_after_the_period_does_not_change_its_report(city_of_two_districts: Session) -> None:
    session = city_of_two_districts
    rules.save(session, BUREAU, stricter(60), "district", 2, now=AFTER_TERM)
    session.commit()
    assert judged_in_term(session)[301].compliant
    assert rules.overrides_in_force(session, BUREAU).for_school(2, []) is not None  # in force from now on


def test_the_school_threshold_of_an_override_judges_its_schools(city_of_two_districts: Session) -> None:
    session = city_of_two_districts
    rule_set = rules.in_force(session, BUREAU)
    term = rule_set.calendar.term("2025-spring")
    # School 12: 201 complies, 202 and 203 do not (2 of 3 non-compliant).
    assert not compliance.evaluate(session, BUREAU, term, rule_set, today=TODAY).schools[12].compliant
    rules.save(session, BUREAU, {**stricter(50, "网络研修学时"), "school_noncompliant_share": 0.7}, "district", 1,
               now=BEFORE_TERM)
    session.commit()
    evaluation = compliance.evaluate(session, BUREAU, term, rule_set, today=TODAY)
    assert evaluation.schools[12].compliant and evaluation.schools[12].threshold == 0.7
    assert evaluation.schools[21].threshold == 0.2  # district 2 keeps the bureau's 20 %
