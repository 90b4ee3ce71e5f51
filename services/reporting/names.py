"""Teachers' names for the lines a report lists, asked of accounts once per report.

Accounts' events carry no names (other bureaus subscribe to them), so reporting's read models hold ids
and staff numbers only. A report names the few teachers it lists — a bulletin's ranking, one school's
teachers — with one bounded lookup. When accounts does not answer (down, slow, refusing), the report is
still produced: names stay empty and `names_unavailable` is true.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import eventlet

log = logging.getLogger(__name__)

# accounts' largest batch (services.accounts.schemas.MAX_NAME_LOOKUP); larger lists are asked in parts.
BATCH = 2000
TIMEOUT_SECONDS = 5.0

# teacher ids -> {id: {"name", "staff_number", "school_id"}}; ids may come back as text (JSON keys).
NameLookup = Callable[[list[int]], Mapping[Any, Mapping[str, Any]]]


def rpc_lookup(accounts: Any, scope: dict[str, Any], timeout: float | None = None) -> NameLookup:
    """A lookup through an accounts RPC proxy, bounded in time (nameko 2 RPC has no timeout of its own).

    The caller's scope goes along: accounts names only the teachers that scope may see.
    """

    def lookup(teacher_ids: list[int]) -> Mapping[Any, Mapping[str, Any]]:
        return accounts.teacher_names(scope, teacher_ids)

    return bounded(lookup, TIMEOUT_SECONDS if timeout is None else timeout)


class NamesTimedOut(Exception):
    """Accounts did not answer a name lookup in time."""


def bounded(lookup: NameLookup, timeout: float) -> NameLookup:
    """The same lookup, each call given at most `timeout` seconds (then NamesTimedOut)."""

    def within(teacher_ids: list[int]) -> Mapping[Any, Mapping[str, Any]]:
        timer = eventlet.Timeout(timeout)
        try:
            return lookup(teacher_ids)
        except eventlet.Timeout as error:
            if error is not timer:  # someone else's timeout: not ours to swallow
                raise
            raise NamesTimedOut(f"no answer in {timeout:g} s") from None
        finally:
            timer.cancel()

    return within


def resolve(lookup: NameLookup | None, teacher_ids: Iterable[int]) -> dict[int, str] | None:
    """Names by teacher id, or None when they could not be had (no lookup, an error, out of time)."""
    wanted = sorted(set(teacher_ids))
    if not wanted:
        return {}
    if lookup is None:
        return None
    found: dict[int, str] = {}
    try:
        for start in range(0, len(wanted), BATCH):
            answer = lookup(wanted[start:start + BATCH])
            found.update({int(key): str(value.get("name") or "") for key, value in answer.items()})
    except NamesTimedOut:
        log.warning("accounts did not give %d teachers' names in time; the report goes without", len(wanted))
        return None
    except Exception:  # any failure of accounts costs the names only, never the report
        log.warning("could not get %d teachers' names from accounts", len(wanted), exc_info=True)
        return None
    return found


def name_lines(report: dict[str, Any], sections: Iterable[str], lookup: NameLookup | None) -> dict[str, Any]:
    """Set `name` on every teacher line of the report's sections and `names_unavailable`; returns the report.

    A teacher accounts does not know (or the caller may not see) gets an empty name; only a failed
    lookup makes `names_unavailable` true.
    """
    lines = [line for section in sections for line in report.get(section) or []]
    names = resolve(lookup, (line["teacher_id"] for line in lines))
    for line in lines:
        line["name"] = names.get(line["teacher_id"]) if names is not None else None
    report["names_unavailable"] = names is None
    return report
