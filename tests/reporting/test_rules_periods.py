from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.reporting import rules
from services.reporting.exceptions import InvalidInput
from services.reporting.periods import Calendar, Term
from tests.reporting.conftest import BUREAU, SPRING_TERM


def body_with(**changes):
    return {**rules.PRESET, "terms": [SPRING_TERM], **changes}


def test_presets_carry_the_documents_defaults():
    preset = rules.preset()
    by_id = {rule.id: rule for rule in preset.rules}
    assert by_id["online_hours"].minimum == 50 and by_id["offline_hours"].minimum == 20
    assert by_id["blog_posts"].minimum == 3
    assert by_id["group_online_preps"].minimum == 2 and by_id["group_online_preps"].online_only
    assert by_id["group_small_topics"].minimum == 1
    assert by_id["school_weekly_activity"].minimum == 1
    assert preset.school_noncompliant_share == 0.2
    observed = by_id["lessons_observed"]
    assert observed.required_for_roles(["teacher"]) == 10
    assert observed.required_for_roles(["middle_manager", "teacher"]) == 12
    assert observed.required_for_roles(["dean"]) == observed.required_for_roles(["principal"]) == 20
    assert observed.required_for_roles(["centre_member"]) == 30
    # Every person has the base quota; roles only raise it (document 001, issue 14 item 5).
    assert observed.required_for_roles(["researcher"]) == 10
    assert observed.required_for_roles(["group_leader"]) == 20


@pytest.mark.parametrize(("change", "field"), [
    ({"rules": [{"id": "x", "kind": "teacher_hours", "mode": "online", "period": "term", "minimum": -1}]},
     "rules.0.minimum"),
    ({"rules": [{"id": "x", "kind": "weekly_magic", "period": "term", "minimum": 1}]}, "rules.0.kind"),
    ({"rules": [{"id": "x", "kind": "role_activity_count", "activity_kinds": ["lesson_observation"],
                 "period": "term", "minimum_by_role": {"janitor": 3}}]}, "rules.0.minimum_by_role"),
    ({"rules": [{"id": "x", "kind": "teacher_activity_count", "activity_kinds": ["dancing"],
                 "period": "term", "minimum": 1}]}, "rules.0.activity_kinds"),
    ({"terms": [SPRING_TERM, {"code": "b", "starts_on": "2025-07-01", "ends_on": "2025-08-01"}]}, "terms"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"school_noncompliant_share": 1.5}, "school_noncompliant_share"),
])
def test_invalid_rules_are_refused_with_the_field_named(change, field):
    with pytest.raises(InvalidInput) as raised:
        rules.validate(body_with(**change))
    assert field in raised.value.fields


def test_versions_explain_past_periods(session):
    first = datetime(2025, 1, 10, tzinfo=UTC)
    rules.save(session, BUREAU, body_with(), now=first)
    stricter = body_with(rules=[{**rules.PRESET["rules"][0], "minimum": 60}])
    rules.save(session, BUREAU, stricter, now=datetime(2025, 4, 10, tzinfo=UTC))
    march = rules.in_force(session, BUREAU, datetime(2025, 4, 1, tzinfo=UTC))
    assert march.version == 1 and march.rules[0].minimum == 50
    assert rules.in_force(session, BUREAU).version == 2
    assert rules.in_force(session, BUREAU).rules[0].minimum == 60
    # A period before any rules existed is explained by the first version, not by today's.
    assert rules.in_force(session, BUREAU, datetime(2024, 1, 1, tzinfo=UTC)).version == 1


def test_period_boundaries_follow_the_bureau_time_zone():
    calendar = Calendar("Asia/Shanghai", [Term("s", "春", date(2025, 2, 17), date(2025, 7, 11))])
    late_march_utc = datetime(2025, 3, 31, 16, 30, tzinfo=UTC)  # 00:30 on 1 April in Shanghai
    assert calendar.period_keys(calendar.local_date(late_march_utc)) == {"month": "M2025-04", "week": "W2025-14",
                                                                        "term": "Ts"}
    assert "term" not in calendar.period_keys(date(2025, 2, 16))
    march = calendar.month("2025-03")
    assert (march.starts_on, march.ends_on, march.term.code) == (date(2025, 3, 1), date(2025, 3, 31), "s")
    assert calendar.previous(march).key == "M2025-02"
    with pytest.raises(InvalidInput):
        calendar.month("2025-13")
    with pytest.raises(InvalidInput):
        calendar.term("autumn")
