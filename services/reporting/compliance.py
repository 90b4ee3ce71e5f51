"""Judging teachers, groups and schools against the rules in force, from the counters only.

Periods: a rule is judged in its own period. In a month's report, term rules are judged pro rata —
the term's months so far against the quota times the share of the term elapsed by the month's end —
so a teacher learns in March, not in July, that they are behind. In a term's report, group rules
(per month) are judged against the monthly quota times the months of the term.
School rule: a school is non-compliant when the share of its non-compliant teachers reaches the
threshold (20 % by default). Only active teachers count; a teacher with no activity is counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from services.reporting.models import alliance_members, counters, districts, groups, schools, teachers
from services.reporting.periods import Period, month_key, months_between, week_key, week_starts_between
from services.reporting.rules import Rule, RuleSet

TEACHER_RULE_KINDS = ("teacher_hours", "teacher_activity_count", "role_activity_count")


@dataclass
class RuleResult:
    rule_id: str
    label: str
    done: float
    required: float
    pro_rata: bool = False

    @property
    def missing(self) -> float:
        return round(max(0.0, self.required - self.done), 2)

    @property
    def met(self) -> bool:
        return self.done >= self.required

    def to_dict(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "label": self.label, "done": round(self.done, 2),
                "required": round(self.required, 2), "missing": self.missing, "met": self.met,
                "pro_rata": self.pro_rata}


@dataclass
class TeacherResult:
    teacher_id: int
    school_id: int
    staff_number: str
    subject: str | None
    roles: list[str]
    online_hours: float
    offline_hours: float
    activities: int
    rules: list[RuleResult]

    @property
    def compliant(self) -> bool:
        return all(result.met for result in self.rules)


@dataclass
class GroupResult:
    group_id: int
    school_id: int | None
    name: str
    activities: int
    rules: list[RuleResult]

    @property
    def compliant(self) -> bool:
        return all(result.met for result in self.rules)


@dataclass
class SchoolResult:
    school_id: int
    code: str
    name: str
    district_id: int | None
    threshold: float
    teachers: list[TeacherResult] = field(default_factory=list)
    groups: list[GroupResult] = field(default_factory=list)
    weekly: RuleResult | None = None

    @property
    def noncompliant_teachers(self) -> int:
        return sum(1 for teacher in self.teachers if not teacher.compliant)

    @property
    def noncompliant_share(self) -> float:
        return self.noncompliant_teachers / len(self.teachers) if self.teachers else 0.0

    @property
    def compliant(self) -> bool:
        return self.noncompliant_share < self.threshold

    def missing_by_rule(self) -> dict[str, int]:
        """How many teachers miss each rule (what a lagging school must fix)."""
        missing: dict[str, int] = defaultdict(int)
        for teacher in self.teachers:
            for result in teacher.rules:
                if not result.met:
                    missing[result.rule_id] += 1
        return dict(missing)

    def summary(self) -> dict[str, Any]:
        total = len(self.teachers)
        online = sum(teacher.online_hours for teacher in self.teachers)
        offline = sum(teacher.offline_hours for teacher in self.teachers)
        return {
            "school_id": self.school_id, "code": self.code, "name": self.name, "district_id": self.district_id,
            "teachers": total, "compliant_teachers": total - self.noncompliant_teachers,
            "noncompliant_teachers": self.noncompliant_teachers,
            "noncompliant_share": round(self.noncompliant_share, 4), "threshold": self.threshold,
            "compliant": self.compliant,
            "online_hours": round(online, 2), "offline_hours": round(offline, 2),
            "online_hours_per_teacher": round(online / total, 2) if total else 0.0,
            "activities": sum(teacher.activities for teacher in self.teachers),
            "groups": len(self.groups), "compliant_groups": sum(1 for group in self.groups if group.compliant),
            "weekly_activity": self.weekly.to_dict() if self.weekly else None,
            "teachers_missing_by_rule": self.missing_by_rule(),
        }


@dataclass
class Evaluation:
    period: Period
    rule_set: RuleSet
    schools: dict[int, SchoolResult]
    district_names: dict[int, str]
    alliances: dict[int, tuple[str, list[int]]]


def _elapsed_share(period: Period, term_start: date, term_end: date) -> float:
    elapsed = (min(period.ends_on, term_end) - term_start).days + 1
    return max(0.0, min(1.0, elapsed / ((term_end - term_start).days + 1)))


def _rule_periods(rule: Rule, period: Period) -> tuple[list[str], float, bool]:
    """The counter periods a rule sums in a report, the factor on its quota, and whether pro rata."""
    if period.kind == "month":
        if rule.period == "month":
            return [period.key], 1.0, False
        if period.term is None:  # a month outside every term: term rules are not judged
            return [], 0.0, True
        term = period.term
        months = [month_key(date(year, month, 1)) for year, month in months_between(term.starts_on, period.ends_on)]
        return months, _elapsed_share(period, term.starts_on, term.ends_on), True
    if rule.period == "month":
        return [period.key], float(len(months_between(period.starts_on, period.ends_on))), False
    return [period.key], 1.0, False


def _pro_rata(required: float, factor: float, count_rule: bool) -> float:
    value = required * factor
    return float(math.ceil(value - 1e-9)) if count_rule else round(value, 1)


def _sums(session: Session, subject: str, subject_ids: list[int] | None, columns: dict[str, tuple[Any, list[str]]],
          ) -> dict[int, dict[str, float]]:
    """Per subject id, one sum per named column, each over its own set of periods (one query)."""
    all_periods = sorted({key for _, periods in columns.values() for key in periods})
    if not all_periods:
        return {}
    selected = [counters.c.subject_id]
    for name, (aggregate, periods) in columns.items():
        # Each sum sees only its own periods: wrap the aggregate's argument in a period filter.
        selected.append(_filtered(aggregate, periods).label(name))
    query = select(*selected).where(counters.c.subject == subject, counters.c.period.in_(all_periods))
    if subject_ids is not None:
        query = query.where(counters.c.subject_id.in_(subject_ids))
    query = query.group_by(counters.c.subject_id)
    return {row[0]: {name: float(row[index + 1] or 0) for index, name in enumerate(columns)}
            for row in session.execute(query)}


def _filtered(aggregate: tuple[str, Any], periods: list[str]) -> Any:
    kind, argument = aggregate
    return func.sum(case((counters.c.period.in_(periods), argument), else_=0)) if kind == "sum" else argument


def _argument(rule: Rule) -> tuple[str, Any]:
    if rule.kind == "teacher_hours":
        return "sum", counters.c.online_centihours if rule.mode == "online" else counters.c.offline_centihours
    amount = counters.c.online_count if rule.online_only else counters.c.count
    return "sum", case((counters.c.kind.in_(rule.activity_kinds), amount), else_=0)


def evaluate(session: Session, bureau_id: int, period: Period, rule_set: RuleSet,
             school_ids: list[int] | None = None, today: date | None = None) -> Evaluation:
    """Every visible school's teachers, groups and weekly activity in one period."""
    school_query = select(schools).where(schools.c.bureau_id == bureau_id).order_by(schools.c.id)
    if school_ids is not None:
        school_query = school_query.where(schools.c.id.in_(school_ids))
    results = {
        row["id"]: SchoolResult(row["id"], row["code"], row["name"], row["district_id"],
                                rule_set.school_noncompliant_share)
        for row in session.execute(school_query).mappings()
    }
    visible = list(results) if school_ids is not None else None
    _judge_teachers(session, bureau_id, period, rule_set, results, visible)
    _judge_groups(session, bureau_id, period, rule_set, results, visible)
    _judge_weeks(session, period, rule_set, results, visible, today or date.today())
    names = {row.id: row.name for row in session.execute(select(districts.c.id, districts.c.name)
                                                        .where(districts.c.bureau_id == bureau_id))}
    alliances: dict[int, tuple[str, list[int]]] = {}
    for row in session.execute(select(alliance_members).order_by(alliance_members.c.school_id)):
        if row.school_id in results:
            _name, members = alliances.setdefault(row.alliance_id, (row.alliance_name or str(row.alliance_id), []))
            members.append(row.school_id)
    return Evaluation(period, rule_set, results, names, alliances)


def _judge_teachers(session: Session, bureau_id: int, period: Period, rule_set: RuleSet,
                    results: dict[int, SchoolResult], visible: list[int] | None) -> None:
    teacher_rules = rule_set.of_kind(*TEACHER_RULE_KINDS)
    plans = {rule.id: _rule_periods(rule, period) for rule in teacher_rules}
    columns: dict[str, tuple[Any, list[str]]] = {
        f"r{index}": (_argument(rule), plans[rule.id][0]) for index, rule in enumerate(teacher_rules)
    }
    columns["online"] = (("sum", counters.c.online_centihours), [period.key])
    columns["offline"] = (("sum", counters.c.offline_centihours), [period.key])
    columns["activities"] = (("sum", counters.c.count), [period.key])
    query = select(teachers).where(teachers.c.bureau_id == bureau_id, teachers.c.active.is_(True))
    if visible is not None:
        query = query.where(teachers.c.school_id.in_(visible))
    roster = [row for row in session.execute(query.order_by(teachers.c.id)).mappings()
              if row["school_id"] in results]
    ids = [row["id"] for row in roster] if visible is not None else None
    sums = _sums(session, "teacher", ids, columns)
    for row in roster:
        done = sums.get(row["id"], {})
        roles = row["roles"].split(",") if row["roles"] else ["teacher"]
        rule_results = []
        for index, rule in enumerate(teacher_rules):
            required = rule.required_for_roles(roles)
            _, factor, pro_rata = plans[rule.id]
            if required is None or factor == 0:
                continue  # no quota for this person's roles, or no term to judge it in
            amount = done.get(f"r{index}", 0.0)
            if rule.kind == "teacher_hours":
                amount /= 100
            rule_results.append(RuleResult(rule.id, rule.label, amount,
                                           _pro_rata(required, factor, rule.kind != "teacher_hours"), pro_rata))
        results[row["school_id"]].teachers.append(TeacherResult(
            row["id"], row["school_id"], row["staff_number"], row["subject"], roles,
            done.get("online", 0.0) / 100, done.get("offline", 0.0) / 100, int(done.get("activities", 0)),
            rule_results,
        ))


def _judge_groups(session: Session, bureau_id: int, period: Period, rule_set: RuleSet,
                  results: dict[int, SchoolResult], visible: list[int] | None) -> None:
    group_rules = rule_set.of_kind("group_activity_count")
    query = select(groups).where(groups.c.bureau_id == bureau_id, groups.c.school_id.is_not(None))
    if visible is not None:
        query = query.where(groups.c.school_id.in_(visible))
    rows = [row for row in session.execute(query.order_by(groups.c.id)).mappings() if row["school_id"] in results]
    plans = {rule.id: _rule_periods(rule, period) for rule in group_rules}
    columns: dict[str, tuple[Any, list[str]]] = {
        f"r{index}": (_argument(rule), plans[rule.id][0]) for index, rule in enumerate(group_rules)
    }
    columns["activities"] = (("sum", counters.c.count), [period.key])
    sums = _sums(session, "group", [row["id"] for row in rows] if visible is not None else None, columns)
    for row in rows:
        done = sums.get(row["id"], {})
        rule_results = [
            RuleResult(rule.id, rule.label, done.get(f"r{index}", 0.0), rule.minimum * plans[rule.id][1])
            for index, rule in enumerate(group_rules)
        ]
        results[row["school_id"]].groups.append(
            GroupResult(row["id"], row["school_id"], row["name"], int(done.get("activities", 0)), rule_results))


def _judge_weeks(session: Session, period: Period, rule_set: RuleSet, results: dict[int, SchoolResult],
                 visible: list[int] | None, today: date) -> None:
    """Weeks that begin in the period (and have begun): how many had the school's activities."""
    for rule in rule_set.of_kind("school_activity_frequency"):
        weeks = [week_key(monday) for monday in week_starts_between(period.starts_on, min(period.ends_on, today))]
        if not weeks:
            continue
        query = (
            select(counters.c.subject_id, counters.c.period)
            .where(counters.c.subject == "school", counters.c.period.in_(weeks),
                   counters.c.kind.in_(rule.activity_kinds))
            .group_by(counters.c.subject_id, counters.c.period)
            .having(func.sum(counters.c.count) >= rule.minimum)
        )
        if visible is not None:
            query = query.where(counters.c.subject_id.in_(visible))
        weeks_met: dict[int, int] = defaultdict(int)
        for school_id, _week in session.execute(query):
            weeks_met[school_id] += 1
        for school_id, school in results.items():
            school.weekly = RuleResult(rule.id, rule.label, float(weeks_met.get(school_id, 0)), float(len(weeks)))


# --- views -----------------------------------------------------------------------------------------


def period_out(period: Period) -> dict[str, Any]:
    return {"kind": period.kind, "key": period.key, "label": period.label,
            "starts_on": period.starts_on.isoformat(), "ends_on": period.ends_on.isoformat(),
            "term": period.term.code if period.term else None}


def teacher_out(teacher: TeacherResult) -> dict[str, Any]:
    return {"teacher_id": teacher.teacher_id, "school_id": teacher.school_id, "staff_number": teacher.staff_number,
            "subject": teacher.subject, "roles": teacher.roles, "compliant": teacher.compliant,
            "online_hours": round(teacher.online_hours, 2), "offline_hours": round(teacher.offline_hours, 2),
            "activities": teacher.activities, "rules": [result.to_dict() for result in teacher.rules]}


def group_out(group: GroupResult) -> dict[str, Any]:
    return {"group_id": group.group_id, "school_id": group.school_id, "name": group.name,
            "activities": group.activities, "compliant": group.compliant,
            "rules": [result.to_dict() for result in group.rules]}


def school_report(evaluation: Evaluation, school_id: int) -> dict[str, Any]:
    school = evaluation.schools[school_id]
    return {
        "period": period_out(evaluation.period), "rules_version": evaluation.rule_set.version,
        **school.summary(),
        "district_name": evaluation.district_names.get(school.district_id or -1),
        "group_results": [group_out(group) for group in school.groups],
        "teacher_results": [teacher_out(teacher) for teacher in school.teachers],
    }


def roll_up(members: list[SchoolResult]) -> dict[str, Any]:
    """District, alliance or city totals: schools and teachers, compliant and not, and hours."""
    teachers_total = sum(len(school.teachers) for school in members)
    noncompliant = sum(school.noncompliant_teachers for school in members)
    online = sum(teacher.online_hours for school in members for teacher in school.teachers)
    offline = sum(teacher.offline_hours for school in members for teacher in school.teachers)
    return {
        "schools": len(members), "compliant_schools": sum(1 for school in members if school.compliant),
        "teachers": teachers_total, "noncompliant_teachers": noncompliant,
        "noncompliant_share": round(noncompliant / teachers_total, 4) if teachers_total else 0.0,
        "online_hours": round(online, 2), "offline_hours": round(offline, 2),
        "online_hours_per_teacher": round(online / teachers_total, 2) if teachers_total else 0.0,
        "activities": sum(teacher.activities for school in members for teacher in school.teachers),
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

