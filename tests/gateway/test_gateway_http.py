"""The gateway over real HTTP: gunicorn (gthread) → RPC over RabbitMQ → accounts → PostgreSQL."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
import requests
from openapi_spec_validator import validate as validate_openapi
from openpyxl import Workbook

from services.gateway.app import create_app
from services.gateway.openapi import openapi_path

from .gateway_support import TEACHER_NAMES, City, bearer

PROBLEM = "application/problem+json"
TIMEOUT = 10
JSON_HEADERS = {"Content-Type": "application/json"}


def call(gateway: str, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
    headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
    return requests.request(method, f"{gateway}{path}", headers=headers, timeout=TIMEOUT, **kwargs)


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://lianxiao.example/problems/")
    assert body["title"] and body["detail"]
    return body


def leaked_names(response: requests.Response, visible: set[str]) -> set[str]:
    """Invented teacher names in the answer that belong to schools the token must not see."""
    hidden = {name for key, name in TEACHER_NAMES.items() if key not in visible}
    return {name for name in hidden if name in response.text}


# --- operations endpoints -----------------------------------------------------------------------------


def test_health_and_readiness(gateway: str) -> None:
    assert call(gateway, "GET", "/healthz").json() == {"status": "ok"}
    ready = call(gateway, "GET", "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"broker": "ok", "accounts": "ok"}


def test_openapi_document_is_valid_and_lists_every_route(gateway: str) -> None:
    document = call(gateway, "GET", "/openapi.json").json()
    validate_openapi(document)
    expected = {
        ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/openapi.json"),
        ("get", "/v1/me"), ("get", "/v1/districts"), ("post", "/v1/districts"),
        ("get", "/v1/schools"), ("post", "/v1/schools"), ("get", "/v1/schools/{school_id}"),
        ("get", "/v1/alliances"), ("post", "/v1/alliances"), ("post", "/v1/alliances/{alliance_id}/members"),
        ("get", "/v1/schools/{school_id}/teachers"), ("post", "/v1/schools/{school_id}/teachers"),
        ("get", "/v1/teachers/{teacher_id}"), ("patch", "/v1/teachers/{teacher_id}"),
        ("get", "/v1/groups"), ("post", "/v1/groups"), ("post", "/v1/schools/{school_id}/roster"),
        ("get", "/v1/tokens"), ("post", "/v1/tokens"), ("delete", "/v1/tokens/{token_id}"),
    }
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert expected <= documented
    every_route = {(route.method.lower(), openapi_path(route.path)) for route in create_app().routes}
    assert documented == every_route  # routes other modules contribute are documented too
    teacher_in = document["components"]["schemas"]["TeacherIn"]
    assert {"school_id", "staff_number", "name"} <= set(teacher_in["required"])


def test_metrics_count_requests_across_workers(gateway: str, city: City) -> None:
    for _ in range(3):
        call(gateway, "GET", "/v1/me", city.tokens["bureau_read"])
    text = call(gateway, "GET", "/metrics").text
    lines = [
        line for line in text.splitlines()
        if line.startswith("lianxiao_http_requests_total{") and 'route="/v1/me"' in line and 'status="200"' in line
    ]
    assert lines and all('service="gateway"' in line for line in lines)
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= 3
    assert "lianxiao_http_request_duration_seconds_bucket" in text
    assert "lianxiao_gateway_rpc_duration_seconds_count" in text


def test_rpc_reply_queues_stay_bounded(gateway: str, city: City, platform_config: dict[str, Any],
                                      rabbit_manager: Any) -> None:
    """Long-lived per-thread RPC clients: many requests, at most one reply queue per gunicorn thread."""
    with requests.Session() as session:
        session.headers.update(bearer(city.tokens["bureau_read"]))
        for _ in range(30):
            assert session.get(f"{gateway}/v1/schools", timeout=TIMEOUT).status_code == 200
    vhost = platform_config["AMQP_URI"].rsplit("/", 1)[1]
    reply_queues = [queue for queue in rabbit_manager.get_queues(vhost) if "reply" in queue["name"]]
    assert 0 < len(reply_queues) <= 2 * 8  # 2 workers x 8 threads


# --- authentication and authorisation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no header"),
        ("Basic dXNlcjpwYXNz", "wrong scheme"),
        ("Bearer", "scheme only"),
        ("Bearer ", "empty token"),
        ("Bearer two words", "space in token"),
        ("Bearer lx_not-a-real-token", "unknown token"),
        ("Bearer " + "x" * 600, "absurdly long"),
    ],
)
def test_missing_or_malformed_credentials_give_401(gateway: str, header: str | None, reason: str) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = call(gateway, "GET", "/v1/schools", headers=headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer"), reason


@pytest.mark.parametrize("token_name", ["expired", "revoked"])
def test_expired_and_revoked_tokens_give_401(gateway: str, city: City, token_name: str) -> None:
    body = assert_problem(call(gateway, "GET", "/v1/me", city.tokens[token_name]), 401)
    unknown = assert_problem(call(gateway, "GET", "/v1/me", "lx_" + "Q" * 43), 401)
    assert body["detail"] == unknown["detail"]  # a revoked token tells its holder nothing more (issue 12, item 15)


# (token, method, path template, body, expected status, schools whose teachers may appear)
# Another bureau's schools and teachers answer 404 like missing ones (issue 12, item 15).
MATRIX = [
    ("school_read", "GET", "/v1/schools/{east_one}/teachers", None, 200, {"east_one"}),
    ("school_read", "GET", "/v1/schools/{east_two}/teachers", None, 403, set()),
    ("school_read", "GET", "/v1/schools/{west}/teachers", None, 403, set()),
    ("school_read", "GET", "/v1/schools/{elsewhere}/teachers", None, 404, set()),
    ("school_read", "GET", "/v1/teachers/{t_east_two}", None, 403, set()),
    ("school_read", "GET", "/v1/teachers/{t_east_one}", None, 200, {"east_one"}),
    ("school_read", "GET", "/v1/schools/{east_two}", None, 403, set()),
    ("school_read", "PATCH", "/v1/teachers/{t_east_one}", {"grade": "八年级"}, 403, set()),
    ("school_read", "POST", "/v1/schools/{east_one}/teachers", {"staff_number": "R1", "name": "许若晴"}, 403, set()),
    ("school_write", "PATCH", "/v1/teachers/{t_east_two}", {"grade": "八年级"}, 403, set()),
    ("school_write", "POST", "/v1/schools/{east_two}/teachers", {"staff_number": "W1", "name": "许若晴"}, 403, set()),
    ("school_write", "GET", "/v1/schools/{west}/teachers", None, 403, set()),
    ("school_write", "POST", "/v1/schools", {"bureau_id": "{bureau}", "code": "NEW1", "name": "新校"}, 403, set()),
    ("east_read", "GET", "/v1/schools/{east_one}/teachers", None, 200, {"east_one"}),
    ("east_read", "GET", "/v1/schools/{east_two}/teachers", None, 200, {"east_two"}),
    ("east_read", "GET", "/v1/schools/{west}/teachers", None, 403, set()),
    ("east_read", "GET", "/v1/teachers/{t_west}", None, 403, set()),
    ("bureau_read", "GET", "/v1/schools/{west}/teachers", None, 200, {"west"}),
    ("bureau_read", "GET", "/v1/schools/{elsewhere}/teachers", None, 404, set()),
    ("bureau_read", "POST", "/v1/districts", {"bureau_id": "{bureau}", "name": "北片区"}, 403, set()),
    ("other_bureau_write", "GET", "/v1/schools/{east_one}/teachers", None, 404, set()),
    ("other_bureau_write", "GET", "/v1/teachers/{t_east_one}", None, 404, set()),
    ("other_bureau_write", "PATCH", "/v1/teachers/{t_east_one}", {"grade": "八年级"}, 404, set()),
]


def _fill(template: Any, city: City) -> Any:
    values = {**city.schools, **{f"t_{key}": ident for key, ident in city.teachers.items()}, "bureau": city.bureau_id}
    if isinstance(template, str):
        if template.startswith("{") and template.endswith("}") and template[1:-1] in values:
            return values[template[1:-1]]  # a whole-value placeholder stays an integer
        return template.format(**values)
    if isinstance(template, dict):
        return {key: _fill(value, city) for key, value in template.items()}
    return template


@pytest.mark.parametrize(("token", "method", "path", "body", "status", "visible"), MATRIX)
def test_authorisation_matrix(
    gateway: str, city: City, token: str, method: str, path: str, body: Any, status: int, visible: set[str]
) -> None:
    response = call(gateway, method, _fill(path, city), city.tokens[token], json=_fill(body, city))
    if status >= 400:
        assert_problem(response, status)
    else:
        assert response.status_code == status, response.text
    assert not leaked_names(response, visible)


@pytest.mark.parametrize(
    ("token", "visible_schools"),
    [("school_read", {"east_one"}), ("east_read", {"east_one", "east_two"}),
     ("bureau_read", {"east_one", "east_two", "west"}), ("other_bureau_write", {"elsewhere"})],
)
def test_lists_show_only_what_the_scope_covers(
    gateway: str, city: City, token: str, visible_schools: set[str]
) -> None:
    schools = call(gateway, "GET", "/v1/schools", city.tokens[token])
    assert {row["id"] for row in schools.json()["items"]} == {city.schools[key] for key in visible_schools}
    for path in ("/v1/groups", "/v1/alliances", "/v1/districts", "/v1/tokens"):
        response = call(gateway, "GET", path, city.tokens[token])
        assert response.status_code == 200, (path, response.text)
        assert not leaked_names(response, visible_schools)


def test_school_write_token_changes_its_own_school(gateway: str, city: City) -> None:
    token = city.tokens["school_write"]
    school = city.schools["east_one"]
    created = call(gateway, "POST", f"/v1/schools/{school}/teachers", token,
                   json={"staff_number": "G-100", "name": "宋知秋", "subject": "数学", "roles": ["teacher", "dean"]})
    assert created.status_code == 201, created.text
    teacher = created.json()
    assert created.headers["Location"] == f"/v1/teachers/{teacher['id']}"
    assert teacher["school_id"] == school and teacher["roles"] == ["dean", "teacher"]
    changed = call(gateway, "PATCH", f"/v1/teachers/{teacher['id']}", token, json={"grade": "九年级"})
    assert changed.status_code == 200 and changed.json()["grade"] == "九年级"
    again = call(gateway, "POST", f"/v1/schools/{school}/teachers", token, json={"staff_number": "G-100", "name": "宋"})
    assert_problem(again, 409)
    mismatch = call(gateway, "POST", f"/v1/schools/{school}/teachers", token,
                    json={"school_id": city.schools["east_two"], "staff_number": "G-101", "name": "宋知夏"})
    assert assert_problem(mismatch, 422)["errors"][0]["field"] == "school_id"


def test_a_nul_in_a_name_is_a_422_on_postgresql(gateway: str, city: City) -> None:
    school = city.schools["east_one"]
    for name in ("宋\x00知", "宋\u202e知"):
        refused = call(gateway, "POST", f"/v1/schools/{school}/teachers", city.tokens["school_write"],
                       json={"staff_number": "G-200", "name": name})
        assert assert_problem(refused, 422)["errors"][0]["field"] == "name"
        changed = call(gateway, "PATCH", f"/v1/teachers/{city.teachers['east_one']}", city.tokens["school_write"],
                       json={"name": name})
        assert_problem(changed, 422)


def test_bureau_token_builds_the_organisation(gateway: str, city: City) -> None:
    token = city.tokens["bureau_write"]
    district = call(gateway, "POST", "/v1/districts", token, json={"bureau_id": city.bureau_id, "name": "南片区"})
    assert district.status_code == 201, district.text
    school = call(gateway, "POST", "/v1/schools", token, json={
        "bureau_id": city.bureau_id, "district_id": district.json()["id"], "code": "QS-S1", "name": "南湖小学",
        "kind": "branch",
    })
    assert school.status_code == 201 and school.headers["Location"] == f"/v1/schools/{school.json()['id']}"
    alliance = call(gateway, "POST", "/v1/alliances", token, json={
        "bureau_id": city.bureau_id, "name": "青山联校", "lead_school_id": city.schools["east_one"],
    })
    assert alliance.status_code == 201, alliance.text
    member = call(gateway, "POST", f"/v1/alliances/{alliance.json()['id']}/members", token,
                  json={"school_id": school.json()["id"]})
    assert member.status_code == 200
    assert set(member.json()["member_school_ids"]) == {city.schools["east_one"], school.json()["id"]}
    group = call(gateway, "POST", "/v1/groups", token, json={
        "bureau_id": city.bureau_id, "kind": "research", "school_id": city.schools["east_one"], "name": "语文教研组",
        "subject": "语文", "member_ids": [city.teachers["east_one"]],
    })
    assert group.status_code == 201, group.text
    groups = call(gateway, "GET", f"/v1/groups?school_id={city.schools['east_one']}", city.tokens["school_read"])
    assert group.json()["id"] in {row["id"] for row in groups.json()["items"]}


def test_tokens_issue_use_and_revoke(gateway: str, city: City) -> None:
    issued = call(gateway, "POST", "/v1/tokens", city.tokens["bureau_write"], json={
        "scope_kind": "school", "scope_id": city.schools["east_two"], "label": "柳湾小学教务", "access": "read",
    })
    assert issued.status_code == 201, issued.text
    secret, token_id = issued.json()["token"], issued.json()["id"]
    listed = call(gateway, "GET", "/v1/tokens", city.tokens["bureau_read"]).json()["items"]
    assert token_id in {row["id"] for row in listed} and secret not in json.dumps(listed)
    # Not used before revocation, so no gateway worker has it cached: refused at once.
    revoked = call(gateway, "DELETE", f"/v1/tokens/{token_id}", city.tokens["bureau_write"])
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert_problem(call(gateway, "GET", "/v1/me", secret), 401)
    assert_problem(call(gateway, "DELETE", f"/v1/tokens/{token_id}", city.tokens["school_read"]), 403)


def test_pagination_follows_next_links(gateway: str, city: City) -> None:
    token = city.tokens["bureau_write"]
    school = city.schools["west"]
    for number in range(4):
        response = call(gateway, "POST", f"/v1/schools/{school}/teachers", token,
                        json={"staff_number": f"P{number}", "name": f"翻页教师{number}"})
        assert response.status_code == 201
    seen: list[int] = []
    path: str | None = f"/v1/schools/{school}/teachers?limit=2"
    while path:
        page = call(gateway, "GET", path, token)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [row["id"] for row in body["items"]]
        path = body["next"]
        if path:
            assert page.headers["Link"] == f'<{path}>; rel="next"'
    assert len(seen) == len(set(seen)) >= 5 and seen == sorted(seen)


# --- bad input never gives 500 ------------------------------------------------------------------------


def test_bad_json_wrong_types_unknown_fields(gateway: str, city: City) -> None:
    token = city.tokens["bureau_write"]
    headers = {"Content-Type": "application/json"}
    for raw in (b"{", b"", b"\xff\xfe", b'{"name": NaN}', b"[" * 100_000, b'{"bureau_id": ' + b"9" * 5000 + b"}"):
        assert_problem(call(gateway, "POST", "/v1/districts", token, data=raw, headers=headers), 400)
    wrong = assert_problem(call(gateway, "POST", "/v1/districts", token, json={"bureau_id": "one", "name": 5}), 422)
    assert {error["field"] for error in wrong["errors"]} == {"bureau_id", "name"}
    unknown = assert_problem(call(gateway, "POST", "/v1/districts", token,
                                  json={"bureau_id": city.bureau_id, "name": "北片区", "colour": "red"}), 422)
    assert unknown["errors"] == [{"field": "colour", "reason": "Unknown field."}]
    assert_problem(call(gateway, "POST", "/v1/districts", token, json=[1, 2]), 422)
    assert_problem(call(gateway, "POST", "/v1/districts", token, data="name=x",
                        headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    huge_id = assert_problem(call(gateway, "POST", "/v1/districts", token,
                                  json={"bureau_id": city.bureau_id, "name": "北片区", "hub_school_id": 10**12}), 422)
    assert huge_id["errors"][0]["field"] == "hub_school_id"


def test_oversized_body_gives_413(gateway: str, city: City) -> None:
    body = json.dumps({"bureau_id": city.bureau_id, "name": "x" * (1024 * 1024 + 10)})
    assert_problem(call(gateway, "POST", "/v1/districts", city.tokens["bureau_write"], data=body,
                        headers={"Content-Type": "application/json"}), 413)


def test_unknown_route_wrong_method_and_bad_ids(gateway: str, city: City) -> None:
    token = city.tokens["bureau_read"]
    assert_problem(call(gateway, "GET", "/v1/nothing-here", token), 404)
    assert_problem(call(gateway, "GET", "/v1/schools/99999999999999999999", token), 404)
    assert_problem(call(gateway, "GET", "/v1/schools/0", token), 404)
    assert_problem(call(gateway, "GET", "/v1/schools/2000000000", token), 404)
    wrong_method = call(gateway, "PUT", "/v1/schools", token, json={})
    assert_problem(wrong_method, 405)
    assert set(wrong_method.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    bad_query = assert_problem(call(gateway, "GET", f"/v1/schools/{city.schools['west']}/teachers?limit=abc&x=1",
                                    token), 422)
    assert {error["field"] for error in bad_query["errors"]} == {"limit", "x"}
    assert_problem(call(gateway, "GET", f"/v1/schools/{city.schools['west']}/teachers?after_id={10**15}", token), 422)


WRITE_ROUTES = [
    ("POST", "/v1/districts"), ("POST", "/v1/schools"), ("POST", "/v1/alliances"),
    ("POST", "/v1/alliances/1/members"), ("POST", "/v1/schools/1/teachers"),
    ("PATCH", "/v1/teachers/{east_one_teacher}"),
    ("POST", "/v1/groups"), ("POST", "/v1/tokens"),
]
ODD_BODIES: list[Any] = [
    None, 0, "text", [], {}, {"bureau_id": None}, {"bureau_id": True, "name": ""},
    {"bureau_id": 1, "name": "甲", "kind": "wormhole", "lead_school_id": -1, "school_id": 2**40},
    {"member_school_ids": [1, "2", None], "member_ids": [2**63], "roles": ["emperor"], "active": "maybe"},
    {"scope_kind": "school", "scope_id": 2**31, "label": "x", "ttl_days": 10**6},
    {"staff_number": "../../etc", "name": "x" * 5000, "leader_id": 10**20, "kind": "collaboration",
     "bureau_id": 1, "school_id": 10**20},
]


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
def test_odd_bodies_are_answered_4xx_never_5xx(gateway: str, city: City, method: str, path: str) -> None:
    token = city.tokens["spare_one"] if "teachers" in path else city.tokens["bureau_write"]
    # A teacher of spare_one's own school: fixed ids would name another test's teacher in a shared database.
    path = path.format(east_one_teacher=city.teachers["east_one"])
    for body in ODD_BODIES:
        response = call(gateway, method, path, token, data=json.dumps(body), headers=JSON_HEADERS)
        if body == {} and method == "PATCH":
            assert response.status_code == 200  # changing nothing is allowed
            continue
        assert 400 <= response.status_code < 500, (body, response.text)
        assert response.headers["Content-Type"].startswith(PROBLEM)


# --- roster upload ------------------------------------------------------------------------------------


def roster_xlsx(rows: list[list[Any]]) -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["工号", "姓名", "学科", "年级", "角色", "教研组"])
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def test_roster_xlsx_upload_and_reupload_changes_nothing(gateway: str, city: City) -> None:
    token, school = city.tokens["spare_two"], city.schools["east_one"]
    content = roster_xlsx([
        [1001, "赵明远", "语文", "七年级", "教师", "七年级语文组"],
        [1002, "钱思源", "数学", "七年级", "组长", "七年级数学组"],
        ["1003", "孙雨桐", "英语", "八年级", "教师、博主", ""],
    ])
    first = call(gateway, "POST", f"/v1/schools/{school}/roster", token,
                 files={"file": ("花名册.xlsx", content, XLSX)})
    assert first.status_code == 200, first.text
    assert first.json() == {"created": 3, "updated": 0, "unchanged": 0, "rows": 3, "school_id": school}
    again = call(gateway, "POST", f"/v1/schools/{school}/roster", token, data=content, headers={"Content-Type": XLSX})
    assert again.status_code == 200, again.text
    assert again.json() == {"created": 0, "updated": 0, "unchanged": 3, "rows": 3, "school_id": school}
    teachers = call(gateway, "GET", f"/v1/schools/{school}/teachers?limit=1000", token).json()["items"]
    assert {"赵明远", "钱思源", "孙雨桐"} <= {teacher["name"] for teacher in teachers}


def test_roster_with_bad_rows_is_rejected_with_row_errors(gateway: str, city: City) -> None:
    token, school = city.tokens["spare_two"], city.schools["east_one"]
    content = roster_xlsx([[2001, "", "语文", "七年级", "教师", ""], [2002, "吴清和", "数学", "七年级", "皇帝", ""]])
    body = assert_problem(
        call(gateway, "POST", f"/v1/schools/{school}/roster", token, files={"file": ("roster.xlsx", content, XLSX)}),
        422,
    )
    assert {(error["row"], error["column"]) for error in body["errors"]} == {(2, "name"), (3, "roles")}
    teachers = call(gateway, "GET", f"/v1/schools/{school}/teachers?limit=1000", token).json()["items"]
    assert "吴清和" not in {teacher["name"] for teacher in teachers}  # all-or-nothing


def test_roster_upload_refusals(gateway: str, city: City) -> None:
    token, school = city.tokens["spare_two"], city.schools["east_one"]
    path = f"/v1/schools/{school}/roster"
    csv = "工号,姓名\n3001,冯晚晴\n".encode()
    assert_problem(call(gateway, "POST", path, token, data=csv, headers={"Content-Type": "image/png"}), 415)
    assert_problem(call(gateway, "POST", path, token, files={"other": ("r.csv", csv, "text/csv")}), 422)
    assert_problem(call(gateway, "POST", path, token, data=b"not a zip", headers={"Content-Type": XLSX}), 422)
    assert_problem(call(gateway, "POST", path, token, data=b"x" * (9 * 1024 * 1024),
                        headers={"Content-Type": "text/csv"}), 413)
    assert_problem(call(gateway, "POST", path, city.tokens["school_read"], data=csv,
                        headers={"Content-Type": "text/csv"}), 403)
    assert_problem(call(gateway, "POST", f"/v1/schools/{city.schools['east_two']}/roster", token, data=csv,
                        headers={"Content-Type": "text/csv"}), 403)
    broken = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"r.csv\"\r\n\r\nabc"
    response = call(gateway, "POST", path, token, data=broken,
                    headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert 400 <= response.status_code < 500
    created = call(gateway, "POST", path, token, data=csv, headers={"Content-Type": "text/csv"})
    assert created.status_code == 200 and created.json()["created"] == 1


# --- rate limit ---------------------------------------------------------------------------------------


def test_rate_limit_gives_429_with_retry_after(gateway: str, city: City) -> None:
    token = city.tokens["rate_limited"]
    with requests.Session() as session:  # keep-alive: one connection, so one worker's buckets
        session.headers.update(bearer(token))
        statuses = []
        for _ in range(80):
            response = session.get(f"{gateway}/v1/me", timeout=TIMEOUT)
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
    assert statuses[0] == 200 and statuses[-1] == 429
    assert_problem(response, 429)
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["RateLimit-Limit"] == "40" and response.headers["RateLimit-Remaining"] == "0"
    time.sleep(int(response.headers["Retry-After"]))
    assert requests.get(f"{gateway}/v1/me", headers=bearer(token), timeout=TIMEOUT).status_code == 200
