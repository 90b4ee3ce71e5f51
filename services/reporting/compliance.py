"""Judging teachers, groups and schools against the rules in force, from the tallies only.

Periods: a rule is judged in its own period. In a month's report, term rules are judged pro rata —
the term to date (one tally row) against the quota times the share of the term elapsed by the month's
end — so a teacher learns in March, not in July, that they are behind. In a term's report, group rules
(per month) are judged against the monthly quota times the months of the term.
School rule (document 003): a school is non-compliant when the share of its teachers who miss any
of the rule set's `school_rule_ids` (003's study hours by default) reaches the threshold (20 % by
default). Reports also show how many teachers meet every rule. Only active teachers count; a teacher
with no activity is counted.

Teachers are judged in SQL (`_judged_teachers`): one row per teacher with, per rule, what was done,
what is required of their roles and whether it is missing. Schools' figures are sums over those rows
(GROUP BY school), so a city bulletin never builds 30 000 teacher objects in Python; the per-teacher
detail (a school's report, a teacher's progress) reads the very same rows.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from typing import Any

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, FromClause

from services.reporting import rules
from services.reporting.kinds import count_column, online_count_column, online_seconds_column, seconds_column
from services.reporting.models import alliance_members, districts, groups, schools, tallies, teachers
from services.reporting.periods import (
    Period,
    month_key,
    month_range,
    months_between,
    term_to_date_key,
    week_key,
    week_starts_between,
)
from services.reporting.results import (
    SECONDS_PER_HOUR,
    Evaluation,
    GroupResult,
    MonthResult,
    RuleResult,
    SchoolResult,
    TeacherResult,
)
from services.reporting.rules import TEACHER_RULE_KINDS, Overrides, Rule, RuleSet


@dataclass(frozen=True)
class Plan:
    """How a rule is judged in a report: from which tally row, its quota's factor, and whether pro rata."""

    source: str | None  # "own" (the report's period row) | "to_date" (term to date) | None: not judged
    factor: float
    pro_rata: bool


def _elapsed_share(through: date, term_start: date, term_end: date) -> float:
    elapsed = (min(through, term_end) - term_start).days + 1
    return max(0.0, min(1.0, elapsed / ((term_end - term_start).days + 1)))


def judged_through(period: Period, today: date) -> date:
    """The last day a report judges: the period's end, or today while the period runs ("to date")."""
    return min(period.ends_on, today)


def _plan(rule: Rule, period: Period, through: date) -> Plan:
    """How a teacher rule is judged: term quotas pro rata to `through` in a month or a running term."""
    if period.kind == "month":
        if rule.period == "month":
            return Plan("own", 1.0, False)
        if period.term is None:  # a month outside every term: term rules are not judged
            return Plan(None, 0.0, True)
        return Plan("to_date", _elapsed_share(through, period.term.starts_on, period.term.ends_on), True)
    if through < period.ends_on:  # the term runs: its quotas to date, like a month's report
        return Plan("own", _elapsed_share(through, period.starts_on, period.ends_on), True)
    return Plan("own", 1.0, False)


def _pro_rata(required: float, factor: float, count_rule: bool) -> float:
    value = required * factor
    return float(math.ceil(value - 1e-9)) if count_rule else round(value, 1)


def credited_seconds(row: FromClause, rule_set: RuleSet, mode: str) -> ColumnElement[Any]:
    """The study time a tally row credits in `mode` by the rule set's credit table, in seconds."""
    terms: list[ColumnElement[Any]] = []
    for kind, credit in rule_set.credits.items():
        if credit.basis == "duration":
            online = row.c[online_seconds_column(kind)]
            terms.append(online if mode == "online" else row.c[seconds_column(kind)] - online)
        elif credit.basis == "per_activity" and credit.mode == mode:
            terms.append(row.c[count_column(kind)] * credit.seconds)
    return func.coalesce(reduce(operator.add, terms), 0) if terms else literal(0)


def _done(row: FromClause, rule: Rule, rule_set: RuleSet) -> ColumnElement[Any]:
    """What a tally row holds towards a rule: credited seconds, or the count of the rule's kinds."""
    if rule.kind == "teacher_hours":
        return credited_seconds(row, rule_set, rule.mode or "online")
    column_of = online_count_column if rule.online_only else count_column
    return func.coalesce(reduce(operator.add, [row.c[column_of(kind)] for kind in rule.activity_kinds]), 0)


def _roles_of(stored: str) -> list[str]:
    return stored.split(",") if stored else ["teacher"]


def _required(rule: Rule, plan: Plan, role_sets: list[str]) -> ColumnElement[Any]:
    """A teacher's quota for the rule in this report, NULL when none of their roles has one.

    In seconds for hours (integers compare exactly with the tallies), whole activities for counts.
    A role rule's quota depends on the teacher's whole set of roles (`Rule.required_for_roles`): it is
    worked out once per distinct stored role set and looked up by equality in SQL.
    """
    count_rule = rule.kind != "teacher_hours"

    def scaled(required: float) -> int:
        value = _pro_rata(required, plan.factor, count_rule)
        return int(value) if count_rule else round(value * SECONDS_PER_HOUR)

    if rule.kind != "role_activity_count":
        return literal(scaled(rule.minimum))
    quotas = {stored: rule.required_for_roles(_roles_of(stored)) for stored in role_sets}
    known = {stored: scaled(quota) for stored, quota in quotas.items() if quota is not None}
    return case(known, value=teachers.c.roles, else_=None) if known else literal(None)


def _judged_teachers(bureau_id: int, period: Period, rule_set: RuleSet, school_ids: list[int] | None,
                     role_sets: list[str], through: date) -> tuple[Any, list[tuple[Rule, Plan]]]:
    """One row per active teacher: figures of the period and, per judged rule, done / required / miss."""
    own, to_date = tallies.alias("own"), tallies.alias("to_date")
    judged = [(rule, plan) for rule in rule_set.of_kind(*TEACHER_RULE_KINDS)
              if (plan := _plan(rule, period, through)).source is not None]
    sources = {"own": own, "to_date": to_date}
    columns: list[Any] = [
        teachers.c.id, teachers.c.school_id, teachers.c.staff_number, teachers.c.subject, teachers.c.roles,
        credited_seconds(own, rule_set, "online").label("online"),
        credited_seconds(own, rule_set, "offline").label("offline"),
        func.coalesce(own.c.activities, 0).label("activities"),
    ]
    for index, (rule, plan) in enumerate(judged):
        assert plan.source is not None  # unjudged rules were left out above
        columns += [_done(sources[plan.source], rule, rule_set).label(f"done{index}"),
                    _required(rule, plan, role_sets).label(f"required{index}")]
    joined = teachers.outerjoin(own, and_(own.c.subject == "teacher", own.c.subject_id == teachers.c.id,
                                          own.c.period == period.key))
    if period.kind == "month" and period.term is not None:
        joined = joined.outerjoin(to_date, and_(
            to_date.c.subject == "teacher", to_date.c.subject_id == teachers.c.id,
            to_date.c.period == term_to_date_key(period.term, period.starts_on)))
    query = select(*columns).select_from(joined).where(teachers.c.bureau_id == bureau_id,
                                                       teachers.c.active.is_(True))
    if school_ids is not None:
        query = query.where(teachers.c.school_id.in_(school_ids))
    # Done and required first, the verdicts over them: each role CASE is evaluated once per teacher.
    amounts = query.subquery("amounts")
    misses = [case((and_(amounts.c[f"required{index}"].is_not(None),
                         amounts.c[f"done{index}"] < amounts.c[f"required{index}"]), 1), else_=0)
              for index in range(len(judged))]
    school_misses = [miss for miss, (rule, _plan) in zip(misses, judged, strict=True)
                     if rule.id in rule_set.school_rule_ids]
    applied = [case((amounts.c[f"required{index}"].is_not(None), 1), else_=0) for index in range(len(judged))]
    zero = literal(0)
    verdicts = select(
        amounts, *[miss.label(f"miss{index}") for index, miss in enumerate(misses)],
        case((reduce(operator.add, misses, zero) > 0, 1), else_=0).label("noncompliant"),
        case((reduce(operator.add, school_misses, zero) > 0, 1), else_=0).label("school_noncompliant"),
        reduce(operator.add, applied, zero).label("applied"),
    )
    return verdicts.cte("judged"), judged


def _teacher_result(row: Any, judged: list[tuple[Rule, Plan]], school_rule_ids: tuple[str, ...]) -> TeacherResult:
    rule_results = []
    for index, (rule, plan) in enumerate(judged):
        required = row[f"required{index}"]
        if required is None:
            continue  # no quota for this person's roles
        rule_results.append(RuleResult(rule.id, rule.label, float(row[f"done{index}"]), float(required),
                                       plan.pro_rata, hours=rule.kind == "teacher_hours"))
    return TeacherResult(
        row["id"], row["school_id"], row["staff_number"], row["subject"],
        _roles_of(row["roles"]),
        int(row["online"]), int(row["offline"]), int(row["activities"]), rule_results, school_rule_ids,
    )


def evaluate(session: Session, bureau_id: int, period: Period, rule_set: RuleSet,
             school_ids: list[int] | None = None, today: date | None = None, *, with_teachers: bool = True,
             top_teachers: int = 0, overrides: Overrides | None = None) -> Evaluation:
    """Every visible school's teachers, groups and weekly activity in one period.

    `with_teachers=False` gives the schools' figures without the per-teacher detail (a bulletin);
    `top_teachers` also fetches that many compliant teachers, the most hours first.
    Each school is judged by the most specific rule set in force when the period ended (district, then
    alliance, then `rule_set`, the bureau's; see `rules.Overrides`); `overrides` defaults to those stored.
    """
    if overrides is None:
        overrides = rules.overrides_in_force(session, bureau_id, rule_set.calendar.end_moment(period))
    today = today or rule_set.calendar.local_date(datetime.now(UTC))
    school_query = select(schools).where(schools.c.bureau_id == bureau_id).order_by(schools.c.id)
    if school_ids is not None:
        school_query = school_query.where(schools.c.id.in_(school_ids))
    results = {
        row["id"]: SchoolResult(row["id"], row["code"], row["name"], row["district_id"],
                                rule_set.school_noncompliant_share, rules_version=rule_set.version,
                                rules_scope=rule_set.scope_kind)
        for row in session.execute(school_query).mappings()
    }
    through = judged_through(period, today)
    evaluation = Evaluation(period, rule_set, results, {}, {}, through=through)
    alliance_ids: dict[int, list[int]] = defaultdict(list)
    for row in session.execute(select(alliance_members).order_by(alliance_members.c.school_id)):
        if row.school_id in results:
            alliance_ids[row.school_id].append(row.alliance_id)
            _name, alliance_schools = evaluation.alliances.setdefault(
                row.alliance_id, (row.alliance_name or str(row.alliance_id), []))
            alliance_schools.append(row.school_id)
    # Schools grouped by the rule set that judges them; with no override, one group as before.
    by_rules: dict[tuple[str, int], tuple[RuleSet, dict[int, SchoolResult]]] = {}
    for school_id, school in results.items():
        own = (overrides.for_school(school.district_id, alliance_ids[school_id]) if overrides else None) or rule_set
        by_rules.setdefault((own.scope_kind, own.scope_id), (own, {}))[1][school_id] = school
    best: list[TeacherResult] = []
    for own, members in by_rules.values():
        for school in members.values():
            school.threshold, school.rules_version, school.rules_scope = (
                own.school_noncompliant_share, own.version, own.scope_kind)
            school.school_rule_ids = own.school_rule_ids
        # None: every school of the bureau (no id list in the SQL) — only when one rule set judges them all.
        visible = list(members) if school_ids is not None or len(by_rules) > 1 else None
        best += _judge_teachers(session, bureau_id, period, own, members, visible, with_teachers, top_teachers,
                                through)
        _judge_groups(session, bureau_id, period, own, members, visible, today)
        _judge_weeks(session, period, own, members, visible, today)
        if own is not rule_set:
            evaluation.other_rule_sets.append(own)
    if school_ids is None:  # groups across schools belong to no school: only the whole bureau's view has them
        evaluation.cross_school_groups = judge_cross_school_groups(session, bureau_id, period, rule_set, today)
    best.sort(key=lambda teacher: (-(teacher.online_seconds + teacher.offline_seconds), -teacher.activities,
                                   teacher.teacher_id))
    evaluation.excellent_teachers = best[:top_teachers]
    evaluation.district_names = {
        row.id: row.name
        for row in session.execute(select(districts.c.id, districts.c.name).where(districts.c.bureau_id == bureau_id))
    }
    return evaluation


def _judge_teachers(session: Session, bureau_id: int, period: Period, rule_set: RuleSet,
                    results: dict[int, SchoolResult], visible: list[int] | None, with_teachers: bool,
                    top_teachers: int, through: date) -> list[TeacherResult]:
    """Fill in the schools' figures (and detail); return the top compliant teachers among them."""
    roster = select(teachers.c.roles).where(teachers.c.bureau_id == bureau_id, teachers.c.active.is_(True))
    if visible is not None:
        roster = roster.where(teachers.c.school_id.in_(visible))
    role_sets = list(session.scalars(roster.distinct()))
    judged_rows, judged = _judged_teachers(bureau_id, period, rule_set, visible, role_sets, through)
    per_school = select(
        judged_rows.c.school_id, func.count().label("teachers"), func.sum(judged_rows.c.school_noncompliant),
        func.sum(judged_rows.c.noncompliant),
        func.sum(judged_rows.c.online), func.sum(judged_rows.c.offline), func.sum(judged_rows.c.activities),
        *[func.sum(judged_rows.c[f"miss{index}"]) for index in range(len(judged))],
    ).group_by(judged_rows.c.school_id)
    for school_id, count, noncompliant, short, online, offline, activities, *missed in session.execute(per_school):
        school = results.get(school_id)
        if school is None:  # a teacher of a school reporting has not heard of yet
            continue
        school.teacher_count, school.noncompliant_teachers = int(count), int(noncompliant or 0)
        school.short_of_some_rule = int(short or 0)
        school.online_seconds, school.offline_seconds = int(online or 0), int(offline or 0)
        school.activities = int(activities or 0)
        school.missing = {rule.id: int(total) for (rule, _plan), total in zip(judged, missed, strict=True) if total}
    if with_teachers:
        for row in session.execute(select(judged_rows).order_by(judged_rows.c.id)).mappings():
            if row["school_id"] in results:
                results[row["school_id"]].teachers.append(_teacher_result(row, judged, rule_set.school_rule_ids))
    if not top_teachers:
        return []
    best = (select(judged_rows)
            .where(judged_rows.c.noncompliant == 0, judged_rows.c.applied > 0,
                   judged_rows.c.school_id.in_(list(results)))
            .order_by((judged_rows.c.online + judged_rows.c.offline).desc(), judged_rows.c.activities.desc(),
                      judged_rows.c.id)
            .limit(top_teachers))
    return [_teacher_result(row, judged, rule_set.school_rule_ids) for row in session.execute(best).mappings()]


def group_months(period: Period, today: date) -> list[tuple[str, str, float]]:
    """The months a monthly group quota is judged in: (label, tally key, share of the month in the term).

    Every month of the period that has ended by `today` (a running month is judged once it ends);
    a month the term only partly covers asks its quota pro rata to the term's days in it.
    """
    months = []
    for year, month in months_between(period.starts_on, period.ends_on):
        first, last = month_range(year, month)
        if last >= today:
            continue
        term = period.term
        covered_first, covered_last = (max(first, term.starts_on), min(last, term.ends_on)) if term else (first, last)
        share = ((covered_last - covered_first).days + 1) / ((last - first).days + 1)
        months.append((f"{year:04d}-{month:02d}", month_key(first), share))
    return months


def judge_group_rows(session: Session, period: Period, rule_set: RuleSet, rows: list[Any],
                     today: date) -> list[GroupResult]:
    """Each group's monthly rules judged month by month (document 000: 'every month'), months missed named."""
    group_rules = rule_set.of_kind("group_activity_count")
    months = group_months(period, today)
    done: dict[tuple[int, str], list[int]] = {}
    if rows and months and group_rules:
        query = select(tallies.c.subject_id, tallies.c.period,
                       *[_done(tallies, rule, rule_set) for rule in group_rules]).where(
            tallies.c.subject == "group", tallies.c.period.in_([key for _, key, _ in months]),
            tallies.c.subject_id.in_([row.id for row in rows]))
        done = {(group_id, key): list(amounts) for group_id, key, *amounts in session.execute(query)}
    results = []
    for row in rows:
        rule_results = []
        for index, rule in enumerate(group_rules):
            per_month = [MonthResult(label, int((done.get((row.id, key)) or [0] * len(group_rules))[index]),
                                     int(_pro_rata(rule.minimum, share, count_rule=True)))
                         for label, key, share in months]
            if per_month:
                rule_results.append(RuleResult(
                    rule.id, rule.label, float(sum(month.done for month in per_month)),
                    float(sum(month.required for month in per_month)), months=per_month))
        results.append(GroupResult(row.id, row.school_id, row.name, int(row.activities), rule_results, row.kind))
    return results


def _group_rows(session: Session, bureau_id: int, period: Period, where: Any) -> list[Any]:
    own = tallies.alias("own")
    joined = groups.outerjoin(own, and_(own.c.subject == "group", own.c.subject_id == groups.c.id,
                                        own.c.period == period.key))
    query = select(groups.c.id, groups.c.school_id, groups.c.name, groups.c.kind,
                   func.coalesce(own.c.activities, 0).label("activities")).select_from(joined)
    return list(session.execute(query.where(groups.c.bureau_id == bureau_id, where).order_by(groups.c.id)))


def _judge_groups(session: Session, bureau_id: int, period: Period, rule_set: RuleSet,
                  results: dict[int, SchoolResult], visible: list[int] | None, today: date) -> None:
    where = groups.c.school_id.in_(visible) if visible is not None else groups.c.school_id.is_not(None)
    rows = [row for row in _group_rows(session, bureau_id, period, where) if row.school_id in results]
    for group in judge_group_rows(session, period, rule_set, rows, today):
        if group.school_id is not None:
            results[group.school_id].groups.append(group)


def judge_cross_school_groups(session: Session, bureau_id: int, period: Period, rule_set: RuleSet,
                              today: date) -> list[GroupResult]:
    """Collaboration groups and studios across schools, judged by the bureau's group rules."""
    rows = _group_rows(session, bureau_id, period, groups.c.school_id.is_(None))
    return judge_group_rows(session, period, rule_set, rows, today)


def _judge_weeks(session: Session, period: Period, rule_set: RuleSet, results: dict[int, SchoolResult],
                 visible: list[int] | None, today: date) -> None:
    """Weeks that begin in the period (and have begun): how many had the school's activities."""
    for rule in rule_set.of_kind("school_activity_frequency"):
        # Weeks that have ended by today (a running week is judged once it ends, like a month).
        weeks = [week_key(monday) for monday in week_starts_between(period.starts_on, min(period.ends_on, today))
                 if monday + timedelta(days=6) < today]
        if not weeks:
            continue
        query = (
            select(tallies.c.subject_id, func.count())
            .where(tallies.c.subject == "school", tallies.c.period.in_(weeks),
                   _done(tallies, rule, rule_set) >= rule.minimum)
            .group_by(tallies.c.subject_id)
        )
        if visible is not None:
            query = query.where(tallies.c.subject_id.in_(visible))
        weeks_met = dict(session.execute(query).tuples().all())
        for school_id, school in results.items():
            school.weekly = RuleResult(rule.id, rule.label, float(weeks_met.get(school_id, 0)), float(len(weeks)))
