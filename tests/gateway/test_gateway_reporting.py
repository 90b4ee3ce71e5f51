"""Reporting over real HTTP: gunicorn → RPC → the reporting service → PostgreSQL, downloads included.

The reporting service runs only for this module (its own runner on the package's vhost); its read
models are seeded with the events accounts and activities would publish for the package's city.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from nameko.runners import ServiceRunner
from openpyxl import load_workbook
from sqlalchemy.orm import Session

from services.activities import xapi
from services.activities.models import Activity
from services.common.db import make_engine
from services.reporting import projection
from services.reporting.service import ReportingService

from .gateway_support import City, bearer

TIMEOUT = 30
MARCH = "month:2025-03"
SPRING_TERM = {"code": "2025-spring", "name": "2025年春季学期", "starts_on": "2025-02-17", "ends_on": "2025-07-11"}
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def get(gateway: str, path: str, token: str, **kwargs: Any) -> requests.Response:
    return requests.get(f"{gateway}{path}", headers=bearer(token), timeout=TIMEOUT, **kwargs)


def _event(routing_key: str, body: dict[str, Any], event_id: str | None = None) -> tuple[str, dict, dict]:
    return routing_key, body, {"id": event_id or str(uuid.uuid4()), "type": routing_key, "routing_key": routing_key,
                               "time": "2025-02-01T00:00:00Z"}


def _activity(city: City, key: str, kind: str, occurred_at: str, online: str = "0", offline: str = "0",
              ) -> tuple[str, dict, dict]:
    activity = Activity(
        id=str(uuid.uuid4()), kind=kind, object_id=str(uuid.uuid4()), teacher_id=city.teachers[key],
        school_id=city.schools[key], district_id=city.districts["west" if key == "west" else "east"],
        bureau_id=city.bureau_id, group_id=None, occurred_at=datetime.fromisoformat(occurred_at),
        duration_minutes=int((Decimal(online) + Decimal(offline)) * 60), online_hours=Decimal(online),
        offline_hours=Decimal(offline), details=json.dumps({}), recorded_at=datetime.now(UTC), corrects_id=None,
    )
    return _event(f"activity.recorded.{kind}", xapi.statement(activity), activity.id)


def city_events(city: City) -> list[tuple[str, dict, dict]]:
    """The package city's roster and some March activity, as reporting would receive them."""
    events = [_event("district.created", {"id": ident, "bureau_id": city.bureau_id, "name": name})
              for name, ident in (("东片区", city.districts["east"]), ("西片区", city.districts["west"]))]
    for key in ("east_one", "east_two", "west"):
        district = city.districts["west" if key == "west" else "east"]
        events.append(_event("school.created", {
            "id": city.schools[key], "bureau_id": city.bureau_id, "district_id": district, "code": f"S-{key}",
            "name": {"east_one": "青山一中", "east_two": "柳湾小学", "west": "西岭中学"}[key], "kind": "ordinary"}))
        events.append(_event("teacher.joined", {
            "id": city.teachers[key], "bureau_id": city.bureau_id, "district_id": district,
            "school_id": city.schools[key], "staff_number": f"T{key}", "subject": "语文", "grade": "七年级",
            "active": True, "roles": ["teacher"], "group_ids": []}))
    events.append(_activity(city, "east_one", "online_course_study", "2025-03-03T09:00:00+08:00", online="30"))
    events.append(_activity(city, "east_one", "offline_study", "2025-03-04T09:00:00+08:00", offline="12.5"))
    events.append(_activity(city, "east_two", "blog_post", "2025-03-05T20:00:00+08:00", online="0.5"))
    events.append(_activity(city, "west", "lecture", "2025-03-06T10:00:00+08:00", offline="1.5"))
    return events


@pytest.fixture(scope="module")
def reporting_service(platform_config: dict[str, Any], migrate: Callable[[str], str], city: City,
                      ) -> Iterator[ServiceRunner]:
    url = migrate("reporting")
    engine = make_engine(url)
    with Session(engine) as session:
        for routing_key, body, attributes in city_events(city):
            with session.begin():
                projection.apply_event(session, routing_key, body, attributes)
    engine.dispose()
    runner = ServiceRunner({**platform_config, "METRICS_PORT": 0})
    runner.add_service(ReportingService)
    runner.start()
    yield runner
    runner.kill()


@pytest.fixture(scope="module")
def reporting(gateway: str, city: City, reporting_service: ServiceRunner) -> str:
    """The gateway, once the bureau's rules (with the spring term) are stored through it."""
    body = {"rules": [
        {"id": "online_hours", "kind": "teacher_hours", "mode": "online", "period": "term", "minimum": 50,
         "label": "网络研修学时"},
        {"id": "offline_hours", "kind": "teacher_hours", "mode": "offline", "period": "term", "minimum": 20,
         "label": "线下研修学时"},
    ], "terms": [SPRING_TERM]}
    response = requests.put(f"{gateway}/v1/rules", json=body, headers=bearer(city.tokens["bureau_write"]),
                            timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["terms"][0]["code"] == "2025-spring"
    return gateway


def test_rules_read_back_and_invalid_rules_are_422(reporting: str, city: City) -> None:
    rules = get(reporting, "/v1/rules", city.tokens["school_read"]).json()
    assert [rule["id"] for rule in rules["rules"]] == ["online_hours", "offline_hours"]
    bad = {"rules": [{"id": "x", "kind": "teacher_hours", "mode": "online", "period": "term", "minimum": -1}]}
    response = requests.put(f"{reporting}/v1/rules", json=bad, headers=bearer(city.tokens["bureau_write"]),
                            timeout=TIMEOUT)
    assert response.status_code == 422
    assert "rules.0.minimum" in response.text
    refused = requests.put(f"{reporting}/v1/rules", json=bad, headers=bearer(city.tokens["school_write"]),
                           timeout=TIMEOUT)
    assert refused.status_code == 403


def test_teacher_progress_and_a_bad_period(reporting: str, city: City) -> None:
    path = f"/v1/teachers/{city.teachers['east_one']}/progress"
    progress = get(reporting, path, city.tokens["school_read"], params={"period": MARCH}).json()
    assert (progress["online_hours"], progress["offline_hours"]) == (30.0, 12.5)
    online = next(rule for rule in progress["rules"] if rule["rule_id"] == "online_hours")
    assert online["pro_rata"] and online["done"] == 30.0 and online["met"]
    assert get(reporting, path, city.tokens["school_read"], params={"period": "March"}).status_code == 422
    assert get(reporting, path, city.tokens["school_read"]).status_code == 422  # the period is required


def test_a_school_token_cannot_read_another_schools_compliance(reporting: str, city: City) -> None:
    own = get(reporting, f"/v1/schools/{city.schools['east_one']}/compliance", city.tokens["school_read"],
              params={"period": MARCH})
    assert own.status_code == 200, own.text
    assert own.json()["teachers"] >= 1
    other = get(reporting, f"/v1/schools/{city.schools['west']}/compliance", city.tokens["school_read"],
                params={"period": MARCH})
    assert other.status_code == 403
    assert other.headers["Content-Type"].startswith("application/problem+json")
    district = get(reporting, f"/v1/schools/{city.schools['west']}/compliance", city.tokens["east_read"],
                   params={"period": MARCH})
    assert district.status_code == 403


def stable_bulletin(gateway: str, token: str) -> dict[str, Any]:
    """The March bulletin once two readings agree (accounts' own events may still be arriving)."""
    previous = None
    for _ in range(20):
        current = get(gateway, "/v1/bulletins/month/2025-03", token).json()
        if current == previous:
            return current
        previous = current
        time.sleep(0.3)
    raise AssertionError("the bulletin kept changing")


def test_xlsx_download_carries_the_json_numbers(reporting: str, city: City) -> None:
    token = city.tokens["bureau_read"]
    report = stable_bulletin(reporting, token)
    response = get(reporting, "/v1/bulletins/month/2025-03.xlsx", token)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == XLSX
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="bulletin-2025-03.xlsx"')
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == "2025年3月网络教研通报.xlsx"

    workbook = load_workbook(io.BytesIO(response.content))
    sheet = workbook["学校"]
    assert sheet.freeze_panes == "A3"  # row 1: the title with period and rule version; row 2: the header
    assert "规则版本" in sheet["A1"].value
    header = [cell.value for cell in sheet[2]]
    rows = [dict(zip(header, row, strict=True)) for row in sheet.iter_rows(min_row=3, values_only=True)]
    assert [row["学校ID"] for row in rows] == [line["school_id"] for line in report["schools"]]
    for row, line in zip(rows, report["schools"], strict=True):
        assert (row["教师数"], row["未达标教师"], row["未达标比例"]) == (
            line["teachers"], line["noncompliant_teachers"], line["noncompliant_share"])
        assert (row["网络研修学时"], row["线下研修学时"]) == (line["online_hours"], line["offline_hours"])
    mine = next(row for row in rows if row["学校ID"] == city.schools["east_one"])
    assert mine["网络研修学时"] >= 30.0
    districts = {row[0]: row for row in workbook["片区"].iter_rows(min_row=3, values_only=True)}
    for line in report["districts"]:
        assert districts[line["district_id"]][4] == line["teachers"]


def test_csv_download_is_utf8_with_bom_and_scoped(reporting: str, city: City) -> None:
    response = get(reporting, "/v1/bulletins/month/2025-03.csv", city.tokens["school_read"],
                   params={"section": "schools"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.content.startswith(b"\xef\xbb\xbf")
    assert "filename*=UTF-8''" in response.headers["Content-Disposition"]
    lines = response.content.decode("utf-8-sig").splitlines()
    assert lines[0].startswith("学校ID,学校代码,学校")
    assert [line.split(",")[0] for line in lines[1:]] == [str(city.schools["east_one"])]  # a school sees itself
    assert get(reporting, "/v1/bulletins/month/2025-03.csv", city.tokens["school_read"],
               params={"section": "salaries"}).status_code == 422
    assert get(reporting, "/v1/bulletins/week/2025-03", city.tokens["school_read"]).status_code == 422
