"""Quota rules: their kinds, the bureau's presets (`PRESET`), validation, and which rule set was in force.

A rule set is one bureau's whole configuration (time zone, terms, school threshold, rules). Every
change stores a new version; a report names the version it was judged by, chosen as the newest
version created before the period ended, so a past bulletin is always explained by the rules of then.
A district or alliance may have its own rule set; it overrides the bureau's for its schools.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.timeutil import as_utc
from services.reporting.exceptions import InvalidInput
from services.reporting.kinds import ACTIVITY_KINDS
from services.reporting.models import rule_sets
from services.reporting.periods import DEFAULT_TIMEZONE, Calendar, Period, Term, zone
from services.reporting.schemas import (
    CREDIT_BASES,
    CREDIT_SOURCES,
    DEFAULT_CREDITS,
    KIND_LABELS,
    MODES,
    credit_text,
)

ROLES = (
    "teacher", "group_leader", "blog_host", "moderator", "middle_manager", "dean", "principal",
    "researcher", "centre_member", "bureau_admin",
)
BASE_ROLE = "teacher"  # the role whose quota every person has
# Rule kind → the period granularities it may be judged in.
RULE_KINDS: dict[str, tuple[str, ...]] = {
    "teacher_hours": ("month", "term"),
    "teacher_activity_count": ("month", "term"),
    "role_activity_count": ("month", "term"),
    "group_activity_count": ("month",),
    "school_activity_frequency": ("week",),
}
SCOPE_KINDS = ("bureau", "district", "alliance")
TEACHER_RULE_KINDS = ("teacher_hours", "teacher_activity_count", "role_activity_count")
# School-level teaching-research activities: what makes "a school activity" in a week.
SCHOOL_ACTIVITY_KINDS = [
    "collective_lesson_prep", "demonstration_lesson", "research_lesson", "open_lesson",
    "same_lesson_different_designs", "iterative_lesson_polishing", "lecture", "training",
]

PRESET: dict[str, Any] = {
    "timezone": DEFAULT_TIMEZONE,
    "terms": [],
    "school_noncompliant_share": 0.2,
    # "school_rule_ids" left out: it defaults to the set's hour rules (003), whatever rules a bureau sends.
    "credits": DEFAULT_CREDITS,
    "rules": [
        {"id": "online_hours", "kind": "teacher_hours", "mode": "online", "period": "term", "minimum": 50,
         "label": "网络研修学时"},
        {"id": "offline_hours", "kind": "teacher_hours", "mode": "offline", "period": "term", "minimum": 20,
         "label": "线下研修学时"},
        {"id": "blog_posts", "kind": "teacher_activity_count", "activity_kinds": ["blog_post"],
         "period": "term", "minimum": 3, "label": "博文"},
        {"id": "lessons_observed", "kind": "role_activity_count", "activity_kinds": ["lesson_observation"],
         "period": "term", "label": "听课节数",
         "minimum_by_role": {"teacher": 10, "middle_manager": 12, "group_leader": 20, "dean": 20, "principal": 20,
                             "centre_member": 30}},
        {"id": "group_online_preps", "kind": "group_activity_count", "activity_kinds": ["collective_lesson_prep"],
         "online_only": True, "period": "month", "minimum": 2, "label": "网络集体备课"},
        {"id": "group_small_topics", "kind": "group_activity_count", "activity_kinds": ["small_research_topic"],
         "period": "month", "minimum": 1, "label": "小课题"},
        {"id": "school_weekly_activity", "kind": "school_activity_frequency",
         "activity_kinds": SCHOOL_ACTIVITY_KINDS, "period": "week", "minimum": 1, "label": "校本教研活动"},
    ],
}


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    period: str
    label: str
    minimum: float
    mode: str | None
    activity_kinds: tuple[str, ...]
    online_only: bool
    minimum_by_role: dict[str, float]

    def required_for_roles(self, roles: list[str]) -> float | None:
        """A person's quota by role: the highest of their roles' quotas, never below the base quota.

        Everyone on the roster is a teacher, so the `teacher` quota is the base every person has
        (document 001: every teacher observes at least 10 lessons a term); other roles only raise it
        (group leaders 20, principals 20, …).
        None only when the rule sets no quota for teachers nor for any of the person's roles.
        """
        if self.kind != "role_activity_count":
            return self.minimum
        quotas = [self.minimum_by_role[role] for role in {BASE_ROLE, *roles} if role in self.minimum_by_role]
        return max(quotas) if quotas else None


@dataclass(frozen=True)
class Credit:
    """What one activity of a kind credits as study hours (see `kinds.CREDIT_BASES`)."""

    basis: str
    seconds: int = 0  # per_activity only
    mode: str = "online"  # per_activity only


@dataclass(frozen=True)
class RuleSet:
    version: int
    scope_kind: str
    scope_id: int
    calendar: Calendar
    school_noncompliant_share: float
    rules: tuple[Rule, ...]
    body: dict[str, Any]
    credits: dict[str, Credit]
    school_rule_ids: tuple[str, ...]  # the teacher rules a school's 20 % rule counts misses of

    def of_kind(self, *kinds: str) -> list[Rule]:
        return [rule for rule in self.rules if rule.kind in kinds]


def _problem(errors: dict[str, list[str]], where: str, message: str) -> None:
    errors.setdefault(where, []).append(message)


def _number(errors: dict[str, list[str]], where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _problem(errors, where, "Must be a number.")
        return 0.0
    if value < 0:
        _problem(errors, where, "A quota cannot be negative.")
    return float(value)


def validate(body: Any) -> dict[str, Any]:
    """Check a rule set; every problem is named by its place (`rules.2.minimum`), all at once."""
    if not isinstance(body, dict):
        raise InvalidInput("A rule set is a JSON object.", {"_schema": ["Expected an object."]})
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(body) - {"timezone", "terms", "school_noncompliant_share", "rules", "credits",
                                  "school_rule_ids"})
    for name in unknown:
        _problem(errors, name, "Unknown field.")
    timezone = body.get("timezone", DEFAULT_TIMEZONE)
    try:
        zone(str(timezone))
    except InvalidInput:
        _problem(errors, "timezone", f"Unknown time zone {timezone!r}.")
    share = body.get("school_noncompliant_share", 0.2)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        _problem(errors, "school_noncompliant_share", "A share between 0 (exclusive) and 1.")
    terms = _validate_terms(errors, body.get("terms", []))
    credits = _validate_credits(errors, body.get("credits", {}))
    rules = body.get("rules")
    if not isinstance(rules, list) or not rules:
        _problem(errors, "rules", "A non-empty list of rules.")
        rules = []
    seen_ids: set[str] = set()
    for index, rule in enumerate(rules):
        _validate_rule(errors, f"rules.{index}", rule, seen_ids)
    school_rule_ids = _validate_school_rule_ids(errors, body.get("school_rule_ids"), rules)
    if errors:
        raise InvalidInput(f"Invalid rule set: {', '.join(sorted(errors))}.", errors)
    return {
        "timezone": str(timezone),
        "terms": terms,
        "school_noncompliant_share": float(share),
        "school_rule_ids": school_rule_ids,
        "credits": credits,
        "rules": copy.deepcopy(rules),
    }


def default_school_rule_ids(rules: list[Any]) -> list[str]:
    """Document 003's school rule: a teacher fails it by missing the study hours (its hour rules)."""
    return [rule["id"] for rule in rules if isinstance(rule, dict) and rule.get("kind") == "teacher_hours"]


def _validate_school_rule_ids(errors: dict[str, list[str]], ids: Any, rules: list[Any]) -> list[str]:
    """Which teacher rules decide the school's verdict; 003's study hours unless the bureau says otherwise."""
    teacher_rule_ids = [rule.get("id") for rule in rules
                        if isinstance(rule, dict) and rule.get("kind") in TEACHER_RULE_KINDS]
    if ids is None:
        ids = default_school_rule_ids(rules) or teacher_rule_ids
    if not isinstance(ids, list) or not ids or not all(isinstance(rule_id, str) for rule_id in ids):
        _problem(errors, "school_rule_ids", "A non-empty list of teacher rule ids.")
        return []
    for rule_id in ids:
        if rule_id not in teacher_rule_ids:
            _problem(errors, "school_rule_ids", f"{rule_id!r} is not a teacher rule of this set "
                     f"(one of {', '.join(map(str, teacher_rule_ids)) or 'none'}).")
    return list(dict.fromkeys(ids))


def _validate_credits(errors: dict[str, list[str]], credits: Any) -> dict[str, dict[str, Any]]:
    """The whole credit table: the kinds a bureau names, the documents' default for the rest.

    Stored complete, so a version says what every kind credited whatever the defaults become.
    """
    if not isinstance(credits, dict):
        _problem(errors, "credits", "An object: activity kind -> {basis, minutes, mode}.")
        return copy.deepcopy(DEFAULT_CREDITS)
    table = copy.deepcopy(DEFAULT_CREDITS)
    for kind, credit in credits.items():
        where = f"credits.{kind}"
        if kind not in ACTIVITY_KINDS:
            _problem(errors, where, f"Unknown activity kind {kind!r}.")
            continue
        if not isinstance(credit, dict) or credit.get("basis") not in CREDIT_BASES:
            _problem(errors, f"{where}.basis", f"One of {', '.join(CREDIT_BASES)}.")
            continue
        unknown = sorted(set(credit) - {"basis", "minutes", "mode"})
        for name in unknown:
            _problem(errors, f"{where}.{name}", "Unknown field.")
        if credit["basis"] == "per_activity":
            minutes = credit.get("minutes")
            if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not 0 < minutes <= 24 * 60:
                _problem(errors, f"{where}.minutes", "Minutes per activity, more than 0 and at most 1440.")
            if credit.get("mode") not in MODES:
                _problem(errors, f"{where}.mode", "online or offline: which study hours it credits.")
            table[kind] = {"basis": "per_activity", "minutes": minutes, "mode": credit.get("mode")}
        else:
            if "minutes" in credit or "mode" in credit:
                _problem(errors, where, f"A {credit['basis']} credit takes no minutes or mode.")
            table[kind] = {"basis": credit["basis"]}
    return table


def _validate_terms(errors: dict[str, list[str]], terms: Any) -> list[dict[str, str]]:
    if not isinstance(terms, list):
        _problem(errors, "terms", "A list of terms.")
        return []
    parsed: list[tuple[date, date, str]] = []
    cleaned = []
    for index, term in enumerate(terms):
        where = f"terms.{index}"
        if not isinstance(term, dict) or not {"code", "starts_on", "ends_on"} <= set(term):
            _problem(errors, where, "A term has code, starts_on, ends_on (and an optional name).")
            continue
        try:
            starts, ends = date.fromisoformat(str(term["starts_on"])), date.fromisoformat(str(term["ends_on"]))
        except ValueError:
            _problem(errors, where, "Dates are written YYYY-MM-DD.")
            continue
        if ends < starts:
            _problem(errors, where, "A term ends after it starts.")
            continue
        code = str(term["code"])
        if not code or len(code) > 40:
            _problem(errors, f"{where}.code", "1–40 characters.")
        parsed.append((starts, ends, code))
        cleaned.append({"code": code, "name": str(term.get("name") or code),
                        "starts_on": starts.isoformat(), "ends_on": ends.isoformat()})
    codes = [code for _, _, code in parsed]
    if len(set(codes)) != len(codes):
        _problem(errors, "terms", "Term codes repeat.")
    parsed.sort()
    for (_, first_end, first_code), (second_start, _, second_code) in itertools.pairwise(parsed):
        if second_start <= first_end:
            _problem(errors, "terms", f"Terms {first_code} and {second_code} overlap.")
    return cleaned


def _validate_rule(errors: dict[str, list[str]], where: str, rule: Any, seen_ids: set[str]) -> None:
    if not isinstance(rule, dict):
        _problem(errors, where, "A rule is an object.")
        return
    rule_id, kind, period = rule.get("id"), rule.get("kind"), rule.get("period")
    if not isinstance(rule_id, str) or not rule_id or len(rule_id) > 60:
        _problem(errors, f"{where}.id", "A rule needs an id (1–60 characters).")
    elif rule_id in seen_ids:
        _problem(errors, f"{where}.id", f"Rule id {rule_id!r} repeats.")
    else:
        seen_ids.add(rule_id)
    if kind not in RULE_KINDS:
        _problem(errors, f"{where}.kind", f"Unknown rule kind {kind!r}; one of {', '.join(RULE_KINDS)}.")
        return
    if period not in RULE_KINDS[kind]:
        _problem(errors, f"{where}.period", f"A {kind} rule is judged per {' or '.join(RULE_KINDS[kind])}.")
    if kind == "teacher_hours":
        if rule.get("mode") not in ("online", "offline"):
            _problem(errors, f"{where}.mode", "online or offline.")
    else:
        kinds = rule.get("activity_kinds")
        if not isinstance(kinds, list) or not kinds:
            _problem(errors, f"{where}.activity_kinds", "A non-empty list of activity kinds.")
        else:
            for name in kinds:
                if name not in ACTIVITY_KINDS:
                    _problem(errors, f"{where}.activity_kinds", f"Unknown activity kind {name!r}.")
    if kind == "role_activity_count":
        by_role = rule.get("minimum_by_role")
        if not isinstance(by_role, dict) or not by_role:
            _problem(errors, f"{where}.minimum_by_role", "Quotas by role, e.g. {\"teacher\": 10}.")
        else:
            for role, value in by_role.items():
                if role not in ROLES:
                    _problem(errors, f"{where}.minimum_by_role", f"Unknown role {role!r}.")
                _number(errors, f"{where}.minimum_by_role.{role}", value)
    else:
        _number(errors, f"{where}.minimum", rule.get("minimum"))


def build(body: dict[str, Any], version: int = 0, scope_kind: str = "bureau", scope_id: int = 0) -> RuleSet:
    """A validated body as objects."""
    terms = [Term(term["code"], term["name"], date.fromisoformat(term["starts_on"]),
                  date.fromisoformat(term["ends_on"])) for term in body["terms"]]
    rules = tuple(
        Rule(
            id=rule["id"], kind=rule["kind"], period=rule["period"], label=str(rule.get("label") or rule["id"]),
            minimum=float(rule.get("minimum", 0)), mode=rule.get("mode"),
            activity_kinds=tuple(rule.get("activity_kinds", ())), online_only=bool(rule.get("online_only")),
            minimum_by_role={role: float(value) for role, value in (rule.get("minimum_by_role") or {}).items()},
        )
        for rule in body["rules"]
    )
    # Versions stored before credits were part of a rule set are read with the documents' table.
    table = {**DEFAULT_CREDITS, **body.get("credits", {})}
    credits = {kind: Credit(entry["basis"], round(float(entry.get("minutes") or 0) * 60), entry.get("mode") or "online")
               for kind, entry in table.items()}
    # Versions stored before the school's rules were chosen are read with 003's (the hour rules).
    school_rule_ids = body.get("school_rule_ids") or default_school_rule_ids(body["rules"]) or [
        rule.id for rule in rules if rule.kind in TEACHER_RULE_KINDS]
    return RuleSet(version, scope_kind, scope_id, Calendar(body["timezone"], terms),
                   body["school_noncompliant_share"], rules,
                   {**body, "credits": table, "school_rule_ids": school_rule_ids}, credits, tuple(school_rule_ids))


def preset() -> RuleSet:
    return build(validate(PRESET))


def save(session: Session, bureau_id: int, body: Any, scope_kind: str = "bureau", scope_id: int | None = None,
         now: datetime | None = None) -> dict[str, Any]:
    """Store a new version (versions are never changed, so old reports stay explained)."""
    if scope_kind not in SCOPE_KINDS:
        raise InvalidInput(f"Rules apply to a {', '.join(SCOPE_KINDS)}.", {"scope_kind": ["Unknown."]})
    cleaned = validate(body)
    scope_id = bureau_id if scope_kind == "bureau" else scope_id
    if scope_id is None:
        raise InvalidInput("A district or alliance rule set names its id.", {"scope_id": ["Required."]})
    latest = session.scalar(select(func.max(rule_sets.c.version)).where(rule_sets.c.bureau_id == bureau_id))
    version = (latest or 0) + 1
    session.execute(rule_sets.insert().values(
        bureau_id=bureau_id, version=version, scope_kind=scope_kind, scope_id=scope_id,
        body=json.dumps(cleaned, ensure_ascii=False), created_at=now or datetime.now(UTC),
    ))
    return {"bureau_id": bureau_id, "version": version, "scope_kind": scope_kind, "scope_id": scope_id, **cleaned}


def in_force(session: Session, bureau_id: int, at: datetime | None = None, scope_kind: str = "bureau",
             scope_id: int | None = None) -> RuleSet:
    """The newest version created before `at` (default: now); the presets when there is none."""
    scope_id = bureau_id if scope_kind == "bureau" else scope_id
    mine = select(rule_sets).where(rule_sets.c.bureau_id == bureau_id, rule_sets.c.scope_kind == scope_kind,
                                   rule_sets.c.scope_id == scope_id)
    newest = mine.order_by(rule_sets.c.version.desc()).limit(1)
    if at is not None:
        newest = newest.where(rule_sets.c.created_at < at)
    row = session.execute(newest).mappings().first()
    if row is None and at is not None:  # rules written after the period: their first version explains it
        row = session.execute(mine.order_by(rule_sets.c.version.asc()).limit(1)).mappings().first()
    if row is None:
        return preset()
    return build(json.loads(row["body"]), row["version"], row["scope_kind"], row["scope_id"])


def period_and_rules(session: Session, bureau_id: int, kind: str, key: str) -> tuple[Period, RuleSet]:
    """A month (`kind="month"`, key `2025-03`) or term (its code), and the bureau's rules in force when it
    ended; the period is read with that rule set's calendar (its terms and time zone)."""
    current = in_force(session, bureau_id).calendar
    rule_set = in_force(session, bureau_id, current.end_moment(_period(current, kind, key)))
    return _period(rule_set.calendar, kind, key), rule_set


def _period(calendar: Calendar, kind: str, key: str) -> Period:
    return calendar.month(key) if kind == "month" else calendar.term(key)


def describe(rule_set: RuleSet) -> dict[str, Any]:
    """The rule set as published: every rule, and every activity kind with what it credits and why."""
    credits = {kind: {**entry, "label": KIND_LABELS[kind], "credits": credit_text(entry),
                      "default": DEFAULT_CREDITS[kind], "source": CREDIT_SOURCES[kind]}
               for kind, entry in rule_set.body["credits"].items()}
    return {"version": rule_set.version, "scope_kind": rule_set.scope_kind, "scope_id": rule_set.scope_id,
            **rule_set.body, "credits": credits}


@dataclass(frozen=True)
class Overrides:
    """District and alliance rule sets in force at one moment, and how a school finds its own.

    Precedence, most specific first: the school's district; then an alliance it belongs to (when it
    belongs to several with their own rules, the lowest alliance id wins: alliances carry no rank, and
    a fixed choice keeps a report reproducible); then the bureau's rules.
    An override replaces the bureau's rules and school threshold for its schools; periods (time zone,
    terms) stay the bureau's, since every school's tallies are kept on the bureau's calendar.
    """

    districts: dict[int, RuleSet]
    alliances: dict[int, RuleSet]

    def for_school(self, district_id: int | None, alliance_ids: list[int]) -> RuleSet | None:
        if district_id is not None and district_id in self.districts:
            return self.districts[district_id]
        for alliance_id in sorted(alliance_ids):
            if alliance_id in self.alliances:
                return self.alliances[alliance_id]
        return None

    def __bool__(self) -> bool:
        return bool(self.districts or self.alliances)


def overrides_in_force(session: Session, bureau_id: int, at: datetime | None = None) -> Overrides:
    """Every district's and alliance's newest version created before `at` (default: now).

    An override written after `at` did not apply then, so it does not change a past report — except
    when the bureau's own rules were all written after `at` too (`in_force` then explains the period by
    their first version): the whole configuration came later, so overrides count from their first version.
    """
    rows = list(session.execute(
        select(rule_sets).where(rule_sets.c.bureau_id == bureau_id).order_by(rule_sets.c.version)).mappings())

    def before(row: Any) -> bool:
        return at is None or as_utc(row["created_at"]) < at

    bureau_then = any(row["scope_kind"] == "bureau" and before(row) for row in rows)
    chosen: dict[tuple[str, int], Any] = {}
    for row in rows:  # oldest version first
        key = (row["scope_kind"], row["scope_id"])
        if not bureau_then:
            chosen.setdefault(key, row)
        elif before(row):
            chosen[key] = row
    found: dict[str, dict[int, RuleSet]] = {"district": {}, "alliance": {}}
    for row in chosen.values():
        if row["scope_kind"] in found:
            found[row["scope_kind"]][row["scope_id"]] = build(
                json.loads(row["body"]), row["version"], row["scope_kind"], row["scope_id"])
    return Overrides(found["district"], found["alliance"])


