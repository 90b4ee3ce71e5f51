"""Issue 14: each rule judged as the source documents word it (`/work/shared/seeds`, see the README).

Every test names the document and the words it is built from.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from services.reporting import compliance, rules
from tests.reporting.conftest import BUREAU, SPRING_TERM, CityEvents
from tests.reporting.test_projection import apply_all

TODAY = date(2025, 8, 1)  # after the spring term


def city_of(*teachers: tuple[int, list[str]]) -> CityEvents:
    city = CityEvents()
    city.district(1, "东片区")
    city.school(11, 1, "青禾小学")
    for teacher_id, roles in teachers:
        city.teacher(teacher_id, 11, 1, roles=roles)
    return city


@pytest.fixture
def spring(session):
    rules.save(session, BUREAU, {**rules.PRESET, "terms": [SPRING_TERM]})
    session.commit()
    return session


def judge_term(session):
    rule_set = rules.in_force(session, BUREAU)
    return compliance.evaluate(session, BUREAU, rule_set.calendar.term("2025-spring"), rule_set, today=TODAY)


def results_of(evaluation, teacher_id: int) -> dict[str, compliance.RuleResult]:
    teacher = next(t for school in evaluation.schools.values() for t in school.teachers if t.teacher_id == teacher_id)
    return {result.rule_id: result for result in teacher.rules}


def test_001_every_teacher_observes_ten_lessons_and_group_leaders_twenty(spring):
    """001, fifth plan: 教研组长听课达20节以上; third plan: 各教师每学期听课不少于10节."""
    city = city_of((1, ["group_leader"]), (2, ["researcher"]))
    for teacher_id in (1, 2):
        for _ in range(5):
            city.activity(teacher_id, 11, "lesson_observation", "2025-03-10T10:00:00+08:00", offline=Decimal(1))
    apply_all(spring, city.events)
    evaluation = judge_term(spring)
    leader = results_of(evaluation, 1)["lessons_observed"]
    assert (leader.done, leader.required, leader.met) == (5, 20, False)  # was: no rule at all, compliant
    base = results_of(evaluation, 2)["lessons_observed"]
    assert (base.required, base.met) == (10, False)  # a role without its own quota keeps the base
