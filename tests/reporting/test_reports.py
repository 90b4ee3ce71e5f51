from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal

import pytest
from openpyxl import load_workbook

from services.reporting import bulletin, compliance, exports, rules, views
from services.reporting.exceptions import InvalidInput
from tests.reporting.conftest import BUREAU, SPRING_TERM, CityEvents, small_city
from tests.reporting.test_projection import apply_all

TODAY = date(2025, 8, 1)  # every week of the spring term has begun


def comply(city: CityEvents, teacher_id: int, school_id: int, month: int = 3) -> None:
    """Everything a plain teacher needs in a term: 50 h online, 20 h offline, 3 posts, 10 observations."""
    when = f"2025-{month:02d}-10T10:00:00+08:00"
    city.activity(teacher_id, school_id, "online_course_study", when, online=Decimal("50"))
    city.activity(teacher_id, school_id, "offline_study", when, offline=Decimal("10"))
    for _ in range(3):
        city.activity(teacher_id, school_id, "blog_post", when, online=Decimal("0.5"))
    for _ in range(10):
        city.activity(teacher_id, school_id, "lesson_observation", when, offline=Decimal("1"))


@pytest.fixture
def judged(session):
    rules.save(session, BUREAU, {**rules.PRESET, "terms": [SPRING_TERM]})
    session.commit()
    city = small_city()
    city.teacher(204, 12, 1)
    city.teacher(205, 12, 1)
    for teacher_id in (201, 202, 203, 204):
        comply(city, teacher_id, 12)
    comply(city, 101, 11, month=4)
    for month in (3, 4):
        for _ in range(2):
            city.activity(103, 11, "collective_lesson_prep", f"2025-{month:02d}-12T15:00:00+08:00",
                          online=Decimal("1.5"), group_id=501)
        city.activity(103, 11, "small_research_topic", f"2025-{month:02d}-20T15:00:00+08:00", group_id=501)
    apply_all(session, city.events)
    return session


def term_evaluation(session):
    rule_set = rules.in_force(session, BUREAU)
    return compliance.evaluate(session, BUREAU, rule_set.calendar.term("2025-spring"), rule_set, today=TODAY)


def test_teacher_progress_shows_done_required_missing(judged):
    evaluation = term_evaluation(judged)
    teachers = {t.teacher_id: t for school in evaluation.schools.values() for t in school.teachers}
    assert teachers[201].compliant
    results = {result.rule_id: result.to_dict() for result in teachers[301].rules}
    assert results["online_hours"] == {"rule_id": "online_hours", "label": "网络研修学时", "done": 0.0,
                                       "required": 50.0, "done_minutes": 0.0, "required_minutes": 3000.0,
                                       "missing": 50.0, "met": False, "pro_rata": False}
    principal = {result.rule_id: result for result in teachers[106].rules}
    assert principal["lessons_observed"].required == 20  # the highest quota of their roles
    # Blog posts credit no study hours (document 003 counts study hours only): 50 h, not 51.5.
    assert (teachers[201].online_seconds, teachers[201].offline_seconds) == (50 * 3600, 20 * 3600)


def test_the_twenty_percent_rule_and_teachers_who_did_nothing(judged):
    schools = term_evaluation(judged).schools
    # School 12: 4 of 5 compliant — exactly 20 % non-compliant is already non-compliant.
    assert (schools[12].noncompliant_teachers, len(schools[12].teachers)) == (1, 5)
    assert not schools[12].compliant
    assert schools[21].noncompliant_share == 1.0  # its only teacher recorded nothing
    rule_set = rules.build(rules.validate({**rules.PRESET, "terms": [SPRING_TERM], "school_noncompliant_share": 0.25}))
    lenient = compliance.evaluate(judged, BUREAU, rule_set.calendar.term("2025-spring"), rule_set, today=TODAY)
    assert lenient.schools[12].compliant


def test_month_report_judges_term_rules_pro_rata_and_groups_monthly(judged):
    rule_set = rules.in_force(judged, BUREAU)
    march = compliance.evaluate(judged, BUREAU, rule_set.calendar.month("2025-03"), rule_set, today=TODAY)
    teacher = next(t for t in march.schools[12].teachers if t.teacher_id == 201)
    online = next(result for result in teacher.rules if result.rule_id == "online_hours")
    # 43 of the term's 145 days have passed by 31 March: 50 h × 43/145 = 14.8 h.
    assert (online.to_dict()["required"], online.pro_rata, online.met) == (14.8, True, True)
    group = march.schools[11].groups[0]
    assert group.compliant and [r.done for r in group.rules] == [2.0, 1.0]
    february = compliance.evaluate(judged, BUREAU, rule_set.calendar.month("2025-02"), rule_set, today=TODAY)
    assert not february.schools[11].groups[0].compliant


def test_roll_ups_add_up_schools(judged):
    ups = views.roll_ups(term_evaluation(judged))
    east = next(d for d in ups["districts"] if d["district_id"] == 1)
    assert (east["schools"], east["teachers"], east["name"]) == (2, 11, "东片区")
    assert ups["city"]["teachers"] == sum(d["teachers"] for d in ups["districts"]) == 12
    assert ups["city"]["noncompliant_teachers"] == 12 - 5


def test_bulletin_ranks_with_the_numbers_behind_each_line(judged):
    report = bulletin.build(judged, BUREAU, "month", "2025-04", today=TODAY)
    assert report["title"] == "2025年4月网络教研通报"
    assert report["excellent_teachers"][0]["teacher_id"] == 101
    assert report["excellent_teachers"][0]["online_hours"] == 50.0
    assert report["excellent_groups"][0]["group_id"] == 501
    improved = {line["school_id"]: line for line in report["most_improved"]}
    assert improved[11]["compliant_share_before"] == 0.0 and improved[11]["improvement"] > 0
    lagging = {line["school_id"]: line for line in report["lagging_schools"]}
    assert lagging[21]["teachers_missing_by_rule"]["online_hours"] == 1
    assert "网络研修学时未达标 1 人" in lagging[21]["misses"]
    assert "校本教研活动" in lagging[21]["misses"]


def test_a_school_scope_sees_only_itself(judged):
    report = bulletin.build(judged, BUREAU, "term", "2025-spring", school_ids=[21], today=TODAY)
    assert [line["school_id"] for line in report["schools"]] == [21]
    assert report["city"]["teachers"] == 1


def test_exports_carry_the_json_numbers(judged):
    report = bulletin.build(judged, BUREAU, "term", "2025-spring", today=TODAY)
    report["schools"][0]["name"] = "=HYPERLINK(\"http://example.invalid\")"
    data = exports.to_csv(report)
    assert data.startswith(b"\xef\xbb\xbf")
    lines = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert lines[0][:3] == ["学校ID", "学校代码", "学校"]
    assert lines[1][2].startswith("'=")
    assert [float(line[4]) for line in lines[1:]] == [line["teachers"] for line in report["schools"]]

    workbook = load_workbook(io.BytesIO(exports.to_xlsx(report)))
    sheet = workbook["学校"]
    assert sheet.freeze_panes == "A3"
    assert sheet.column_dimensions["C"].width > 8
    header = [cell.value for cell in sheet[2]]
    for row, line in zip(sheet.iter_rows(min_row=3, values_only=True), report["schools"], strict=True):
        values = dict(zip(header, row, strict=True))
        assert values["学校ID"] == line["school_id"]
        assert values["未达标比例"] == line["noncompliant_share"]
        assert values["网络研修学时"] == line["online_hours"]
        assert values["学校达标(003)"] == ("是" if line["compliant"] else "否")
        assert values["全部指标达标教师"] == line["teachers_meeting_every_rule"]
    teachers_sheet = [row for row in workbook["优秀教师"].iter_rows(min_row=3, values_only=True)]
    assert [row[1] for row in teachers_sheet] == [line["teacher_id"] for line in report["excellent_teachers"]]
    with pytest.raises(InvalidInput):
        exports.to_csv(report, "salaries")


def test_school_figures_judged_in_sql_equal_the_per_teacher_detail(judged):
    rule_set = rules.in_force(judged, BUREAU)
    for period in (rule_set.calendar.month("2025-04"), rule_set.calendar.term("2025-spring")):
        detailed = compliance.evaluate(judged, BUREAU, period, rule_set, today=TODAY)
        figures_only = compliance.evaluate(judged, BUREAU, period, rule_set, today=TODAY, with_teachers=False,
                                           top_teachers=3)
        for school_id, school in detailed.schools.items():
            assert figures_only.schools[school_id].summary() == school.summary()
            assert not figures_only.schools[school_id].teachers
            assert school.teacher_count == len(school.teachers)
            assert school.noncompliant_teachers == sum(1 for t in school.teachers if not t.compliant)
            missing = {}
            for teacher in school.teachers:
                for result in teacher.rules:
                    if not result.met:
                        missing[result.rule_id] = missing.get(result.rule_id, 0) + 1
            assert school.missing_by_rule() == missing
        ranked = sorted((t for s in detailed.schools.values() for t in s.teachers if t.compliant and t.rules),
                        key=lambda t: (-(t.online_seconds + t.offline_seconds), -t.activities, t.teacher_id))
        assert [t.teacher_id for t in figures_only.excellent_teachers] == [t.teacher_id for t in ranked[:3]]
        assert ranked, "the city has compliant teachers to rank"
