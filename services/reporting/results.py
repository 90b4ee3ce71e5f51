"""What judging produces: per-rule, teacher, group and school results and a whole evaluation, and how hours
are shown (cut to two decimals, never rounded up). compliance.py fills them; views.py turns them into the
reports' dictionaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from services.reporting.periods import Period
from services.reporting.rules import RuleSet

SECONDS_PER_HOUR = 3600


def display_hours(seconds: float) -> float:
    """Hours for display, cut (never rounded up) to two decimals: 49 h 59 min never reads 50.0."""
    return math.floor(round(seconds) * 100 / SECONDS_PER_HOUR) / 100


def display_hours_up(seconds: float) -> float:
    """Hours still missing, rounded up to two decimals (what is missing never reads smaller)."""
    return math.ceil(round(seconds) * 100 / SECONDS_PER_HOUR) / 100


@dataclass(frozen=True)
class MonthResult:
    """A monthly quota in one month: done, required (pro rata in a month the term only partly covers)."""

    month: str  # YYYY-MM
    done: int
    required: int

    @property
    def met(self) -> bool:
        return self.done >= self.required


@dataclass
class RuleResult:
    """One rule judged: counts for count rules; for hour rules `done` and `required` are exact seconds.

    A monthly rule judged over several months (a term's report) has `months`: it is met only when
    every month is, and `done` / `required` are the months' sums.
    """

    rule_id: str
    label: str
    done: float
    required: float
    pro_rata: bool = False
    hours: bool = False
    months: list[MonthResult] | None = None

    @property
    def missing(self) -> float:
        if self.months is not None:
            return float(sum(max(0, month.required - month.done) for month in self.months))
        short = max(0.0, self.required - self.done)
        return display_hours_up(short) if self.hours else round(short, 2)

    @property
    def met(self) -> bool:
        if self.months is not None:
            return all(month.met for month in self.months)
        return self.done >= self.required

    @property
    def months_missed(self) -> list[str]:
        return [month.month for month in self.months or [] if not month.met]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule_id": self.rule_id, "label": self.label}
        if self.hours:
            out |= {"done": display_hours(self.done), "required": display_hours_up(self.required),
                    "done_minutes": round(self.done / 60, 1), "required_minutes": round(self.required / 60, 1)}
        else:
            out |= {"done": round(self.done, 2), "required": round(self.required, 2)}
        out |= {"missing": self.missing, "met": self.met, "pro_rata": self.pro_rata}
        if self.months is not None:
            out |= {"months": [{"month": month.month, "done": month.done, "required": month.required,
                                "met": month.met} for month in self.months],
                    "months_missed": self.months_missed}
        return out


class MeetsEveryRule:
    """A teacher or group complies when every rule that applies to it is met."""

    rules: list[RuleResult]

    @property
    def compliant(self) -> bool:
        return all(result.met for result in self.rules)


@dataclass
class TeacherResult(MeetsEveryRule):
    teacher_id: int
    school_id: int
    staff_number: str
    subject: str | None
    roles: list[str]
    online_seconds: int
    offline_seconds: int
    activities: int
    rules: list[RuleResult]
    school_rule_ids: tuple[str, ...] = ()

    @property
    def meets_school_rules(self) -> bool:
        """What the school's 20 % rule asks of this teacher (003: the study hours by default)."""
        return all(result.met for result in self.rules if result.rule_id in self.school_rule_ids)


@dataclass
class GroupResult(MeetsEveryRule):
    group_id: int
    school_id: int | None
    name: str
    activities: int
    rules: list[RuleResult]
    kind: str = "research"

    @property
    def judged(self) -> bool:
        """False while no month of the report has ended (nothing to judge yet)."""
        return bool(self.rules)


@dataclass
class SchoolResult:
    """One school's judgement. The figures are sums over its active teachers (computed in SQL);
    `teachers` holds the per-teacher detail only when it was asked for."""

    school_id: int
    code: str
    name: str
    district_id: int | None
    threshold: float
    teachers: list[TeacherResult] = field(default_factory=list)
    groups: list[GroupResult] = field(default_factory=list)
    weekly: RuleResult | None = None
    teacher_count: int = 0
    noncompliant_teachers: int = 0  # missing a school rule (003)
    short_of_some_rule: int = 0  # missing any rule
    school_rule_ids: tuple[str, ...] = ()
    missing: dict[str, int] = field(default_factory=dict)  # rule id -> teachers who miss it
    online_seconds: int = 0  # study time credited by the rule set, exact
    offline_seconds: int = 0
    activities: int = 0
    rules_version: int = 0  # the version of the rule set that judged this school
    rules_scope: str = "bureau"  # bureau | district | alliance: whose rule set that is

    @property
    def noncompliant_share(self) -> float:
        return self.noncompliant_teachers / self.teacher_count if self.teacher_count else 0.0

    @property
    def compliant(self) -> bool:
        return self.noncompliant_share < self.threshold

    def missing_by_rule(self) -> dict[str, int]:
        """How many teachers miss each rule (what a lagging school must fix)."""
        return dict(self.missing)

    def summary(self) -> dict[str, Any]:
        total = self.teacher_count
        online = self.online_seconds / SECONDS_PER_HOUR
        return {
            "school_id": self.school_id, "code": self.code, "name": self.name, "district_id": self.district_id,
            "teachers": total, "compliant_teachers": total - self.noncompliant_teachers,
            "noncompliant_teachers": self.noncompliant_teachers,
            "noncompliant_share": round(self.noncompliant_share, 4), "threshold": self.threshold,
            "compliant": self.compliant, "school_rule_ids": list(self.school_rule_ids),
            "teachers_meeting_every_rule": total - self.short_of_some_rule,
            "teachers_meeting_every_rule_share": round((total - self.short_of_some_rule) / total, 4) if total else 0.0,
            "online_hours": display_hours(self.online_seconds), "offline_hours": display_hours(self.offline_seconds),
            "online_hours_per_teacher": round(online / total, 2) if total else 0.0,
            "activities": self.activities,
            "groups": len(self.groups),
            "compliant_groups": sum(1 for group in self.groups if group.judged and group.compliant),
            "weekly_activity": self.weekly.to_dict() if self.weekly else None,
            "teachers_missing_by_rule": self.missing_by_rule(),
            "rules_version": self.rules_version, "rules_scope": self.rules_scope,
        }


@dataclass
class Evaluation:
    period: Period
    rule_set: RuleSet
    schools: dict[int, SchoolResult]
    district_names: dict[int, str]
    alliances: dict[int, tuple[str, list[int]]]
    excellent_teachers: list[TeacherResult] = field(default_factory=list)
    through: date | None = None  # the last day judged (`judged_through`)
    cross_school_groups: list[GroupResult] = field(default_factory=list)  # collaboration groups, studios
    other_rule_sets: list[RuleSet] = field(default_factory=list)  # overrides that judged some schools

    def rule_labels(self) -> dict[str, str]:
        """Every rule's label, the bureau's winning where an override reuses a rule id."""
        labels: dict[str, str] = {}
        for rule_set in [*self.other_rule_sets, self.rule_set]:
            labels.update({rule.id: rule.label for rule in rule_set.rules})
        return labels
