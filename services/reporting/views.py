"""The reports' dictionaries made from judged results: the period and how far it is judged, a teacher, a
group, one school's report, and roll-ups of districts, alliances and the city.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any

from services.reporting.periods import Period
from services.reporting.results import (
    SECONDS_PER_HOUR,
    Evaluation,
    GroupResult,
    SchoolResult,
    TeacherResult,
    display_hours,
)

TO_DATE_NOTE = "截至{through}：学期指标按已过天数折算；每月、每周指标只评已结束的月份和周"


def period_out(period: Period, through: date | None = None) -> dict[str, Any]:
    """The period, and how far it is judged: `judged_through`, and `to_date` while it still runs."""
    through = through or period.ends_on
    to_date = through < period.ends_on
    return {"kind": period.kind, "key": period.key, "label": period.label,
            "starts_on": period.starts_on.isoformat(), "ends_on": period.ends_on.isoformat(),
            "term": period.term.code if period.term else None,
            "judged_through": through.isoformat(), "to_date": to_date,
            "note": TO_DATE_NOTE.format(through=through.isoformat()) if to_date else None}


def teacher_out(teacher: TeacherResult) -> dict[str, Any]:
    return {"teacher_id": teacher.teacher_id, "school_id": teacher.school_id, "staff_number": teacher.staff_number,
            "subject": teacher.subject, "roles": teacher.roles, "compliant": teacher.compliant,
            "meets_school_rules": teacher.meets_school_rules,
            "online_hours": display_hours(teacher.online_seconds),
            "offline_hours": display_hours(teacher.offline_seconds),
            "activities": teacher.activities, "rules": [result.to_dict() for result in teacher.rules]}


def group_out(group: GroupResult) -> dict[str, Any]:
    return {"group_id": group.group_id, "school_id": group.school_id, "name": group.name, "kind": group.kind,
            "activities": group.activities, "judged": group.judged, "compliant": group.judged and group.compliant,
            "months_missed": sorted({month for result in group.rules for month in result.months_missed}),
            "rules": [result.to_dict() for result in group.rules]}


def school_report(evaluation: Evaluation, school_id: int) -> dict[str, Any]:
    school = evaluation.schools[school_id]
    return {
        "period": period_out(evaluation.period, evaluation.through),
        **school.summary(),
        "district_name": evaluation.district_names.get(school.district_id or -1),
        "group_results": [group_out(group) for group in school.groups],
        "teacher_results": [teacher_out(teacher) for teacher in school.teachers],
    }


def roll_up(members: list[SchoolResult]) -> dict[str, Any]:
    """District, alliance or city totals: schools and teachers, compliant and not, and hours."""
    teachers_total = sum(school.teacher_count for school in members)
    noncompliant = sum(school.noncompliant_teachers for school in members)
    online = sum(school.online_seconds for school in members)
    offline = sum(school.offline_seconds for school in members)
    return {
        "schools": len(members), "compliant_schools": sum(1 for school in members if school.compliant),
        "teachers": teachers_total, "noncompliant_teachers": noncompliant,
        "teachers_meeting_every_rule": sum(school.teacher_count - school.short_of_some_rule for school in members),
        "noncompliant_share": round(noncompliant / teachers_total, 4) if teachers_total else 0.0,
        "online_hours": display_hours(online), "offline_hours": display_hours(offline),
        "online_hours_per_teacher": round(online / SECONDS_PER_HOUR / teachers_total, 2) if teachers_total else 0.0,
        "activities": sum(school.activities for school in members),
    }


def roll_ups(evaluation: Evaluation) -> dict[str, Any]:
    by_district: dict[int | None, list[SchoolResult]] = defaultdict(list)
    for school in evaluation.schools.values():
        by_district[school.district_id].append(school)
    return {
        "city": roll_up(list(evaluation.schools.values())),
        "districts": [
            {"district_id": district_id, "name": evaluation.district_names.get(district_id or -1, "未分片区"),
             **roll_up(members)}
            for district_id, members in sorted(by_district.items(), key=lambda item: item[0] or 0)
        ],
        "alliances": [
            {"alliance_id": alliance_id, "name": name,
             **roll_up([evaluation.schools[school_id] for school_id in school_ids])}
            for alliance_id, (name, school_ids) in sorted(evaluation.alliances.items())
        ],
    }
