"""The monthly bulletin (月度通报) and the term summary: per school and district, with rankings.

Every line carries the numbers it rests on, so a school can check why it is where it is:
- excellent teachers: compliant, ranked by study hours then activities;
- excellent groups: every group rule met, ranked by activities;
- most improved schools: the largest rise in the share of compliant teachers since the last period;
- lagging schools: non-compliant by the school rule (003's 20 %), with everything they miss;
- schools short of weekly activity (000: a school activity every week), listed apart, compliant or not;
- groups across schools (collaboration groups, studios), judged like a school's groups.
The period says how far it is judged (`judged_through`; `to_date` and a note while it runs).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from services.reporting import compliance, rules, views
from services.reporting.results import Evaluation, GroupResult, SchoolResult, display_hours

TOP = 10
# The sections whose lines are teachers (named through `names.name_lines`).
TEACHER_SECTIONS = ("excellent_teachers",)


def build(session: Session, bureau_id: int, kind: str, key: str, school_ids: list[int] | None = None,
          today: date | None = None, top: int = TOP) -> dict[str, Any]:
    """The bulletin of a month (`kind="month"`, key `2025-03`) or a term (`kind="term"`, its code)."""
    period, rule_set = rules.period_and_rules(session, bureau_id, kind, key)
    # District and alliance overrides in force when the period ended; the previous period (only the
    # baseline of "most improved") is judged by the same rules, so a change of rules is not "progress".
    overrides = rules.overrides_in_force(session, bureau_id, rule_set.calendar.end_moment(period))
    # Schools' figures only (judged in SQL): a bulletin never needs every teacher's detail.
    evaluation = compliance.evaluate(session, bureau_id, period, rule_set, school_ids, today,
                                     with_teachers=False, top_teachers=top, overrides=overrides)
    previous_period = rule_set.calendar.previous(period)
    previous = (compliance.evaluate(session, bureau_id, previous_period, rule_set, school_ids, today,
                                    with_teachers=False, overrides=overrides)
                if previous_period is not None else None)
    return compose(evaluation, previous, top)


def compose(evaluation: Evaluation, previous: Evaluation | None, top: int = TOP) -> dict[str, Any]:
    summaries = {school_id: school.summary() for school_id, school in evaluation.schools.items()}
    for school_id, summary in summaries.items():
        district_id = evaluation.schools[school_id].district_id
        summary["district_name"] = evaluation.district_names.get(district_id or -1, "未分片区")
    labels = evaluation.rule_labels()
    return {
        "title": f"{evaluation.period.label}网络教研通报",
        "period": views.period_out(evaluation.period, evaluation.through),
        "rules_version": evaluation.rule_set.version,
        "rule_labels": labels,
        **views.roll_ups(evaluation),
        "schools": [summaries[school_id] for school_id in sorted(summaries)],
        "excellent_teachers": _excellent_teachers(evaluation, top),
        "excellent_groups": _excellent_groups(evaluation, top),
        "most_improved": _most_improved(evaluation, previous, top),
        "lagging_schools": _lagging(evaluation, labels),
        "weekly_activity_short": _weekly_short(evaluation),
        "cross_school_groups": [_group_line(evaluation, group) for group in evaluation.cross_school_groups],
    }


def _excellent_teachers(evaluation: Evaluation, top: int) -> list[dict[str, Any]]:
    candidates = evaluation.excellent_teachers  # compliant, most hours first (ranked in SQL)
    return [
        {"rank": rank, "teacher_id": teacher.teacher_id, "name": None, "staff_number": teacher.staff_number,
         "school_id": teacher.school_id, "school_name": evaluation.schools[teacher.school_id].name,
         "online_hours": display_hours(teacher.online_seconds),
         "offline_hours": display_hours(teacher.offline_seconds),
         "activities": teacher.activities}
        for rank, teacher in enumerate(candidates[:top], start=1)
    ]


def _group_line(evaluation: Evaluation, group: GroupResult) -> dict[str, Any]:
    return {"group_id": group.group_id, "name": group.name, "kind": group.kind, "school_id": group.school_id,
            "school_name": evaluation.schools[group.school_id].name if group.school_id in evaluation.schools else None,
            "activities": group.activities, "judged": group.judged, "compliant": group.judged and group.compliant,
            "months_missed": "、".join(sorted({m for result in group.rules for m in result.months_missed})),
            "rules": {result.rule_id: round(result.done, 2) for result in group.rules}}


def _excellent_groups(evaluation: Evaluation, top: int) -> list[dict[str, Any]]:
    everyone = [group for school in evaluation.schools.values() for group in school.groups]
    candidates = [group for group in everyone + evaluation.cross_school_groups if group.judged and group.compliant]
    candidates.sort(key=lambda group: (-group.activities, group.group_id))
    return [{"rank": rank, **_group_line(evaluation, group)} for rank, group in enumerate(candidates[:top], start=1)]


def _compliant_share(school: SchoolResult) -> float:
    return 1 - school.noncompliant_share if school.teacher_count else 0.0


def _most_improved(evaluation: Evaluation, previous: Evaluation | None, top: int) -> list[dict[str, Any]]:
    if previous is None:
        return []
    changes = []
    for school_id, school in evaluation.schools.items():
        before = previous.schools.get(school_id)
        if before is None or not school.teacher_count:
            continue
        now_share, before_share = _compliant_share(school), _compliant_share(before)
        if now_share > before_share:
            changes.append((now_share - before_share, school, before_share, now_share))
    changes.sort(key=lambda change: (-change[0], change[1].school_id))
    return [
        {"rank": rank, "school_id": school.school_id, "name": school.name,
         "compliant_share_before": round(before_share, 4), "compliant_share_now": round(now_share, 4),
         "improvement": round(gain, 4)}
        for rank, (gain, school, before_share, now_share) in enumerate(changes[:top], start=1)
    ]


def _lagging(evaluation: Evaluation, labels: dict[str, str]) -> list[dict[str, Any]]:
    """Schools that fail the school rule (003), with every shortfall they must fix."""
    lagging: list[dict[str, Any]] = []
    for school in evaluation.schools.values():
        if school.compliant:
            continue
        misses = [f"{labels.get(rule_id, rule_id)}未达标 {count} 人"
                  for rule_id, count in sorted(school.missing_by_rule().items())]
        groups_short = [group for group in school.groups if group.judged and not group.compliant]
        if groups_short:
            misses.append(f"教研组未达标 {len(groups_short)} 个")
        if school.weekly is not None and not school.weekly.met:
            misses.append(f"{school.weekly.label} {int(school.weekly.done)}/{int(school.weekly.required)} 周")
        lagging.append({
            "school_id": school.school_id, "name": school.name, "district_id": school.district_id,
            "noncompliant_share": round(school.noncompliant_share, 4),
            "noncompliant_teachers": school.noncompliant_teachers, "teachers": school.teacher_count,
            "teachers_missing_by_rule": school.missing_by_rule(),
            "groups_short": len(groups_short),
            "weeks_with_activity": school.weekly.to_dict() if school.weekly else None,
            "misses": "；".join(misses),
        })
    lagging.sort(key=lambda line: (-line["noncompliant_share"], line["school_id"]))
    return lagging


def _weekly_short(evaluation: Evaluation) -> list[dict[str, Any]]:
    """Schools with weeks without a school activity (000: at least one a week), compliant or not."""
    return [
        {"school_id": school.school_id, "name": school.name, "district_id": school.district_id,
         "compliant": school.compliant, "weeks_with_activity": int(school.weekly.done),
         "weeks_judged": int(school.weekly.required)}
        for school in evaluation.schools.values() if school.weekly is not None and not school.weekly.met
    ]
