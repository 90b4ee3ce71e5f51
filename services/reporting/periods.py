"""Periods in the bureau's time zone: months, ISO weeks and the terms a bureau defines.

Period keys are short strings stored in the tallies: `M2025-03` (a month), `W2025-10` (an ISO week),
`T<term code>` (a term) and `T<term code>@2025-03` (the term to date at the end of March: every term
activity up to that month's end, what a month's report judges term quotas by).
An activity belongs to a period by its local date in the bureau's time zone:
an activity at 23:30 UTC on 31 March is an April activity in Shanghai.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.timeutil import as_utc
from services.reporting.exceptions import InvalidInput

DEFAULT_TIMEZONE = "Asia/Shanghai"


@dataclass(frozen=True)
class Term:
    code: str
    name: str
    starts_on: date
    ends_on: date  # inclusive

    def contains(self, day: date) -> bool:
        return self.starts_on <= day <= self.ends_on

    @property
    def days(self) -> int:
        return (self.ends_on - self.starts_on).days + 1


@dataclass(frozen=True)
class Period:
    """A reporting period: a month or a term, with its inclusive local date range."""

    kind: str  # "month" | "term"
    key: str
    label: str
    starts_on: date
    ends_on: date
    term: Term | None = None

    def contains(self, day: date) -> bool:
        return self.starts_on <= day <= self.ends_on


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidInput(f"Unknown time zone {name!r}.", {"timezone": ["Unknown time zone."]}) from error


def month_key(day: date) -> str:
    return f"M{day.year:04d}-{day.month:02d}"


def week_key(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"W{year:04d}-{week:02d}"


def term_key(term: Term) -> str:
    return f"T{term.code}"


def term_to_date_key(term: Term, day: date) -> str:
    """The term to date at the end of `day`'s month."""
    return f"T{term.code}@{day.year:04d}-{day.month:02d}"


def month_range(year: int, month: int) -> tuple[date, date]:
    first = date(year, month, 1)
    following = date(year + (month == 12), month % 12 + 1, 1)
    return first, following - timedelta(days=1)


def parse_month(text: str) -> tuple[int, int]:
    try:
        year_text, month_text = text.split("-")
        year, month = int(year_text), int(month_text)
        if not (2000 <= year <= 2100 and 1 <= month <= 12):
            raise ValueError(text)
    except ValueError as error:
        raise InvalidInput("A month is written YYYY-MM.", {"month": ["Use YYYY-MM."]}) from error
    return year, month


def months_between(first: date, last: date) -> list[tuple[int, int]]:
    months = []
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        months.append((year, month))
        year, month = year + (month == 12), month % 12 + 1
    return months


def week_starts_between(first: date, last: date) -> list[date]:
    """The Mondays of the weeks that start inside [first, last]: a week belongs where it begins."""
    monday = first + timedelta(days=(7 - first.weekday()) % 7)
    weeks = []
    while monday <= last:
        weeks.append(monday)
        monday += timedelta(days=7)
    return weeks


class Calendar:
    """A bureau's time zone and terms: which periods a moment falls in."""

    def __init__(self, timezone: str = DEFAULT_TIMEZONE, terms: list[Term] | None = None) -> None:
        self.timezone_name = timezone
        self.timezone = zone(timezone)
        self.terms = sorted(terms or [], key=lambda term: term.starts_on)

    def local_date(self, moment: datetime) -> date:
        return as_utc(moment).astimezone(self.timezone).date()

    def term_of(self, day: date) -> Term | None:
        for term in self.terms:
            if term.contains(day):
                return term
        return None

    def period_keys(self, day: date) -> dict[str, str]:
        """Every period key the day counts in, by granularity."""
        keys = {"month": month_key(day), "week": week_key(day)}
        term = self.term_of(day)
        if term is not None:
            keys["term"] = term_key(term)
        return keys

    def term_to_date_keys(self, day: date) -> list[str]:
        """The term-to-date periods an in-term day counts in: its month's and every later month's of the term."""
        term = self.term_of(day)
        if term is None:
            return []
        return [term_to_date_key(term, date(year, month, 1)) for year, month in months_between(day, term.ends_on)]

    def month(self, text: str) -> Period:
        year, month = parse_month(text)
        first, last = month_range(year, month)
        term = self.term_of(last) or self.term_of(first)
        return Period("month", month_key(first), f"{year}年{month}月", first, last, term)

    def term(self, code: str) -> Period:
        for term in self.terms:
            if term.code == code:
                return Period("term", term_key(term), term.name, term.starts_on, term.ends_on, term)
        raise InvalidInput(f"No term {code!r} is defined by this bureau.", {"term": ["Unknown term."]})

    def previous(self, period: Period) -> Period | None:
        if period.kind == "month":
            before = period.starts_on - timedelta(days=1)
            return self.month(f"{before.year}-{before.month:02d}")
        earlier = [term for term in self.terms if term.ends_on < period.starts_on]
        return self.term(earlier[-1].code) if earlier else None

    def end_moment(self, period: Period) -> datetime:
        """The first instant after the period, in UTC (rules created before it were in force)."""
        local = datetime.combine(period.ends_on + timedelta(days=1), time.min, tzinfo=self.timezone)
        return local.astimezone(UTC)
