"""Every gateway endpoint x every kind of caller: no data of another school ever leaves the gateway.

The caller is school 青山一中 (east_one). Each case points the request at its own school, another school
of its district, a school of another district, a school of another bureau, or presents an expired,
revoked, missing or read-only token. Every school's data carries markers (teacher names, school names,
activity titles); a response to east_one that contains another school's marker is a leak.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from services.gateway.app import create_app
from services.gateway.routes.base import Route
from tests.gateway.gateway_support import TEACHER_NAMES

from .figures import Row, record
from .infra import PostgresCluster, RabbitNode
from .stack import running_stack

SCHOOL_NAMES = {"east_two": "柳湾小学", "west": "西岭中学", "elsewhere": "白河实验学校"}
TARGETS = {"own school": "east_one", "other school": "east_two", "other district": "west",
           "other bureau": "elsewhere"}
BAD_TOKENS = ("expired token", "revoked token", "no token")
MISSING_ID = 999_999
RULE_VARIABLE = re.compile(r"<(?:(?P<converter>[a-z_]+):)?(?P<name>[a-z_]+)>")


def marker(school: str) -> str:
    return f"LEAKMARK-{school}"


def blog_post(teacher_id: int, school: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "kind": "blog_post", "teacher_id": teacher_id,
            "occurred_at": "2025-03-05T20:00:00+08:00", "details": {"title": marker(school), "word_count": 300}}


def foreign_markers(own: str) -> list[str]:
    others = [school for school in TEACHER_NAMES if school != own]
    return [*(TEACHER_NAMES[school] for school in others), *(SCHOOL_NAMES.get(school, "") for school in others),
            *(marker(school) for school in others)]


def path_for(route: Route, ids: dict[str, Any]) -> str:
    return RULE_VARIABLE.sub(lambda match: str(ids.get(match["name"], MISSING_ID)), route.path)


@pytest.mark.timeout(300)
def test_no_endpoint_leaks_another_schools_data(broker: RabbitNode, postgres: PostgresCluster, tmp_path: Path) -> None:
    services = ("accounts", "activities", "classroom_relay", "reporting")  # every service a route talks to
    with running_stack(broker, postgres, tmp_path, services) as stack:
        assert stack.city is not None
        city = stack.city
        url = stack.url
        activity_ids: dict[str, str] = {}
        for school, teacher in city.teachers.items():
            token = city.tokens["other_bureau_write" if school == "elsewhere" else "bureau_write"]
            item = blog_post(teacher, school)
            answer = requests.post(f"{url}/v1/activities", json=item, timeout=30,
                                   headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 201, answer.text
            activity_ids[school] = item["id"]

        # A token the caller must not revoke, per case (the city has school tokens of east_one only).
        foreign_token = {"east_one": "spare_two", "east_two": "east_read", "west": "bureau_read",
                         "elsewhere": "other_bureau_write"}

        def ids_of(school: str) -> dict[str, Any]:
            return {"school_id": city.schools[school], "teacher_id": city.teachers[school],
                    "activity_id": activity_ids[school], "token_id": city.token_ids[foreign_token[school]]}

        def body_for(route: Route, school: str) -> dict[str, Any] | None:
            if not route.writes:
                return None
            examples = {
                "POST /v1/activities": blog_post(city.teachers[school], "east_one"),
                "POST /v1/activities/batch": {"activities": [blog_post(city.teachers[school], "east_one")]},
                "POST /v1/schools/<id:school_id>/teachers": {
                    "staff_number": f"R{uuid.uuid4().hex[:6]}", "name": "新来的老师", "subject": "数学",
                    "grade": "八年级"},
                "PATCH /v1/teachers/<id:teacher_id>": {"subject": "物理"},
                "POST /v1/districts": {"bureau_id": city.bureau_id, "name": f"片区{uuid.uuid4().hex[:4]}"},
            }
            return examples.get(route.name, {})

        routes = [route for route in create_app().routes if route.authenticated]
        outcomes: Counter[str] = Counter()
        leaks: list[str] = []
        failures: list[str] = []
        cases: list[tuple[str, str, str]] = [(case, school, "school_write") for case, school in TARGETS.items()]
        cases += [(case, "east_one", case.split()[0]) for case in BAD_TOKENS]
        cases.append(("read-only token on writes", "east_one", "school_read"))
        for route in routes:
            for case, school, token_name in cases:
                if case == "read-only token on writes" and not route.writes:
                    continue
                if route.name == "DELETE /v1/tokens/<id:token_id>" and case == "own school":
                    continue  # revoking the caller's sibling token is allowed; it would spoil later cases
                token = city.tokens.get(token_name) if token_name != "no" else None
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                if route.path.startswith("/xapi/"):
                    headers["X-Experience-API-Version"] = "1.0.3"
                path = path_for(route, ids_of(school))
                params = {"school_id": city.schools[school]} if route.name in (
                    "GET /v1/activities", "GET /v1/groups") else None
                response = requests.request(route.method, f"{url}{path}", headers=headers, params=params,
                                            json=body_for(route, school), timeout=30)
                status = response.status_code
                label = f"{route.name} [{case}] -> {status}"
                found = [text for text in foreign_markers("east_one") if text and text in response.text]
                if found:
                    leaks.append(f"{label}: {found}")
                allowed = 200 <= status < 300
                if allowed and route.name == "POST /v1/activities/batch":
                    allowed = response.json()["accepted"] + response.json()["duplicate"] > 0  # else all refused
                outcomes[f"{case}: {'allowed' if allowed else status}"] += 1
                if status >= 500:
                    failures.append(f"{label}: {response.text[:200]}")
                elif (case in BAD_TOKENS and status != 401) or (case == "read-only token on writes" and allowed):
                    failures.append(label)
                elif case in ("other school", "other district", "other bureau") and allowed and route.writes:
                    failures.append(f"{label}: wrote into another school")
                elif case in ("other school", "other district", "other bureau") and allowed and "<" in route.path:
                    failures.append(f"{label}: read another school's resource")

        requests_made = sum(outcomes.values())
        denied = sum(count for key, count in outcomes.items() if not key.endswith("allowed"))
        bad_total = sum(count for key, count in outcomes.items() if key.split(":")[0] in BAD_TOKENS)
        bad_401 = sum(count for key, count in outcomes.items() if key.split(":")[0] in BAD_TOKENS and "401" in key)
        read_only_allowed = outcomes["read-only token on writes: allowed"]
        cross = ("other school", "other district", "other bureau")
        cross_total = sum(count for key, count in outcomes.items() if key.split(":")[0] in cross)
        cross_allowed = sum(outcomes[f"{case}: allowed"] for case in cross)
        record(Row(
            f"authorisation matrix: {len(routes)} endpoints x {len(cases)} cases", requests_made,
            requests_made - denied, notes=(
                f"{len(leaks)} leaks, {len(failures)} wrong answers; bad tokens: {bad_401}/{bad_total} got 401; "
                f"read-only writes allowed: {read_only_allowed}; other school/district/bureau: "
                f"{cross_allowed} answers allowed (lists filtered to own school), {cross_total - cross_allowed} refused"
            ),
        ))
        assert not leaks, leaks
        assert not failures, "\n".join(failures)
