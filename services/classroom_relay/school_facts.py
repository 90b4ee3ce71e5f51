"""What accounts vouches for: schools (bureau, district, link) and teachers (their school), in the caller's scope.

The relay never trusts a request body for these. `AccountsFacts` asks accounts over RPC with the caller's
scope, so accounts answers only about schools and teachers that scope covers; anything else — another
bureau's school, another district's, one that does not exist — is simply absent, and the relay answers
all of them alike. Each call is bounded in time (nameko 2 RPC has none); when accounts does not answer,
the request fails with 503 and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import eventlet

from services.classroom_relay.exceptions import NotFound
from services.common.errors import ServiceUnavailable
from services.common.scope import Scope


class Facts(Protocol):
    def schools(self, scope: Scope, school_ids: Iterable[int]) -> dict[int, dict[str, Any]]: ...

    def teachers(self, scope: Scope, teacher_ids: Iterable[int]) -> dict[int, dict[str, Any]]: ...


def _int_keys(answer: Mapping[Any, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(key): dict(value) for key, value in answer.items()}  # JSON turns integer keys into text


@dataclass
class AccountsFacts:
    """Facts from the accounts service through an RPC proxy; `timeout` seconds per call."""

    accounts: Any
    timeout: float = 5.0

    def _ask(self, call: Callable[[], Mapping[Any, Mapping[str, Any]]], what: str) -> dict[int, dict[str, Any]]:
        timer = eventlet.Timeout(self.timeout)
        try:
            return _int_keys(call())
        except eventlet.Timeout as error:
            if error is not timer:
                raise
            raise ServiceUnavailable(f"Accounts did not confirm the {what} in {self.timeout:g} s; try again.") from None
        finally:
            timer.cancel()

    def schools(self, scope: Scope, school_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        wanted = sorted(set(school_ids))
        return self._ask(lambda: self.accounts.school_facts(scope.to_dict(), wanted), "schools") if wanted else {}

    def teachers(self, scope: Scope, teacher_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        wanted = sorted(set(teacher_ids))
        return self._ask(lambda: self.accounts.teacher_names(scope.to_dict(), wanted), "teachers") if wanted else {}


@dataclass
class StaticFacts:
    """Facts from plain dicts, filtered by scope as accounts filters them (unit tests, tools)."""

    school_rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # id → bureau_id, district_id, link
    teacher_rows: dict[int, int] = field(default_factory=dict)  # teacher id → school id

    def schools(self, scope: Scope, school_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        found = {}
        for school_id in set(school_ids):
            row = self.school_rows.get(school_id)
            if row and scope.covers_school(row["bureau_id"], row.get("district_id"), school_id):
                found[school_id] = {"id": school_id, **row}
        return found

    def teachers(self, scope: Scope, teacher_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        found = {}
        for teacher_id in set(teacher_ids):
            school_id = self.teacher_rows.get(teacher_id)
            if school_id is not None and self.schools(scope, [school_id]):
                found[teacher_id] = {"school_id": school_id}
        return found


def school_in_scope(facts: Facts, scope: Scope, school_id: int) -> dict[str, Any]:
    """Accounts' facts about one school the scope covers; NotFound alike for "not yours" and "not there"."""
    found = facts.schools(scope, [school_id]).get(school_id)
    if found is None:
        raise NotFound(f"School {school_id} does not exist or is outside this token's scope ({scope.describe()}).")
    return found


def require_teacher_of(facts: Facts, scope: Scope, teacher_id: int, school_ids: set[int], role: str) -> None:
    """`teacher_id` must be a teacher the scope covers, at one of `school_ids`; else one answer for all cases."""
    found = facts.teachers(scope, [teacher_id]).get(teacher_id)
    if found is None or int(found.get("school_id", 0)) not in school_ids:
        raise NotFound(
            f"Teacher {teacher_id} is not a teacher of {role} (school {', '.join(map(str, sorted(school_ids)))}) "
            f"in this token's scope ({scope.describe()}).",
            {"teacher_id": ["Not a teacher of that school in your scope."]},
        )

