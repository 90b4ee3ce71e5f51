"""Routes to the accounts service: the organisation, teachers, groups, roster uploads and API tokens.

Accounts decides who may see and change what (it receives the caller's scope on every call); these
handlers validate input with accounts' own schemas first, so bad input is answered without an RPC.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

from werkzeug.exceptions import RequestEntityTooLarge

from services.accounts import schemas as accounts
from services.gateway.problems import HttpProblem
from services.gateway.routes.base import Call, Reply, Route, too_large
from services.gateway.schemas import (
    AllianceMemberIn,
    GroupListQuery,
    RosterResult,
    ScopeOut,
    TeacherPage,
    TeacherPageQuery,
    list_of,
)

SERVICE = "accounts"
XLSX_MIMETYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ROSTER_TYPES = {"text/csv": ".csv", XLSX_MIMETYPE: ".xlsx"}
# A 5 MiB file grows by multipart framing; 8 MiB leaves room without accepting absurd uploads.
ROSTER_BODY_LIMIT = 8 * 1024 * 1024
ROSTER_RPC_TIMEOUT = 30.0  # thousands of rows in one transaction take longer than a read

DistrictList = list_of(accounts.DistrictOut, "DistrictList")
SchoolList = list_of(accounts.SchoolOut, "SchoolList")
AllianceList = list_of(accounts.AllianceOut, "AllianceList")
GroupList = list_of(accounts.GroupOut, "GroupList")
TokenList = list_of(accounts.TokenOut, "TokenList")


def _items(values: list[dict[str, Any]]) -> Reply:
    return Reply({"items": values})


def _created(value: dict[str, Any], location: str | None = None) -> Reply:
    return Reply(value, 201, {"Location": location} if location else {})


def _with_path_value(data: dict[str, Any], name: str, value: int) -> dict[str, Any]:
    """Fill a body field from the path; refuse a body that names a different one."""
    if name in data and data[name] != value:
        raise HttpProblem(
            422, f"{name} in the body ({data[name]!r}) differs from the path ({value}).",
            errors=[{"field": name, "reason": "Must match the path (or be left out)."}],
        )
    return {**data, name: value}


# --- who am I -----------------------------------------------------------------------------------------


def me(call: Call) -> Reply:
    # The signature is for the services behind the broker, not for the token's holder.
    scope = call.scope or {}
    return Reply({name: value for name, value in scope.items() if name not in ("signature", "signed_until")})


# --- districts, schools, alliances --------------------------------------------------------------------


def list_districts(call: Call) -> Reply:
    return _items(call.remote(SERVICE, "list_districts", call.scope))


def create_district(call: Call) -> Reply:
    return _created(call.remote(SERVICE, "create_district", call.scope, call.json(accounts.DistrictIn())))


def list_schools(call: Call) -> Reply:
    return _items(call.remote(SERVICE, "list_schools", call.scope))


def create_school(call: Call) -> Reply:
    school = call.remote(SERVICE, "create_school", call.scope, call.json(accounts.SchoolIn()))
    return _created(school, f"/v1/schools/{school['id']}")


def get_school(call: Call, school_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "get_school", call.scope, school_id))


def list_alliances(call: Call) -> Reply:
    return _items(call.remote(SERVICE, "list_alliances", call.scope))


def create_alliance(call: Call) -> Reply:
    return _created(call.remote(SERVICE, "create_alliance", call.scope, call.json(accounts.AllianceIn())))


def add_alliance_member(call: Call, alliance_id: int) -> Reply:
    body = call.json(AllianceMemberIn())
    return Reply(call.remote(SERVICE, "add_alliance_member", call.scope, alliance_id, body["school_id"]))


# --- teachers and groups ------------------------------------------------------------------------------


def list_teachers(call: Call, school_id: int) -> Reply:
    query = call.query(TeacherPageQuery())
    page = call.remote(
        SERVICE, "list_teachers", call.scope, school_id,
        limit=query["limit"], after_id=query["after_id"], include_inactive=query["include_inactive"],
    )
    headers: dict[str, str] = {}
    page["next"] = None
    if page.get("next_after_id") is not None:
        params = {"limit": query["limit"], "after_id": page["next_after_id"]}
        if query["include_inactive"]:
            params["include_inactive"] = "true"
        page["next"] = f"{call.request.path}?{urlencode(params)}"
        headers["Link"] = f'<{page["next"]}>; rel="next"'
    return Reply(page, headers=headers)


def create_teacher(call: Call, school_id: int) -> Reply:
    # The path names the school, so the body may leave school_id out.
    raw = call.json_value()
    data = _with_path_value(raw, "school_id", school_id) if isinstance(raw, dict) else raw
    teacher = call.remote(SERVICE, "create_teacher", call.scope, call.validate(accounts.TeacherIn(), data))
    return _created(teacher, f"/v1/teachers/{teacher['id']}")


def get_teacher(call: Call, teacher_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "get_teacher", call.scope, teacher_id))


def update_teacher(call: Call, teacher_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "update_teacher", call.scope, teacher_id, call.json(accounts.TeacherUpdate())))


def list_groups(call: Call) -> Reply:
    query = call.query(GroupListQuery())
    return _items(call.remote(SERVICE, "list_groups", call.scope, query.get("school_id")))


def create_group(call: Call) -> Reply:
    return _created(call.remote(SERVICE, "create_group", call.scope, call.json(accounts.GroupIn())))


# --- roster upload ------------------------------------------------------------------------------------


def _roster_file(call: Call) -> tuple[str, bytes]:
    """(filename, content) from a multipart `file` field or a raw CSV/XLSX body."""
    request = call.request
    if request.mimetype == "multipart/form-data":
        call.body_bytes()  # enforces the size limit before the form parser sees anything
        try:
            upload = request.files.get("file")
        except RequestEntityTooLarge as error:
            raise too_large(call.route.max_body_bytes) from error
        except ValueError as error:
            raise HttpProblem(400, f"The multipart body cannot be read: {error}.") from error
        if upload is None:
            raise HttpProblem(
                422, "Send the roster in a form field named 'file'.",
                errors=[{"field": "file", "reason": "Missing."}],
            )
        filename = upload.filename or ""
        if not filename.lower().endswith((".csv", ".xlsx")):
            suffix = ROSTER_TYPES.get(upload.mimetype)
            if suffix is None:
                raise HttpProblem(415, "The roster file must be a .csv or .xlsx file.")
            filename = f"roster{suffix}"
        return filename, upload.read(accounts.ROSTER_MAX_FILE_BYTES + 1)
    suffix = ROSTER_TYPES.get(request.mimetype)
    if suffix is None:
        raise HttpProblem(
            415, "Upload the roster as multipart/form-data (field 'file'), or as the raw body with "
            f"Content-Type text/csv or {XLSX_MIMETYPE}.",
        )
    return f"roster{suffix}", call.body_bytes()


def import_roster(call: Call, school_id: int) -> Reply:
    filename, content = _roster_file(call)
    if len(content) > accounts.ROSTER_MAX_FILE_BYTES:
        raise HttpProblem(413, f"The roster file is larger than {accounts.ROSTER_MAX_FILE_BYTES} bytes; split it.")
    if not content:
        raise HttpProblem(422, "The roster file is empty.", errors=[{"field": "file", "reason": "Empty."}])
    encoded = base64.b64encode(content).decode("ascii")
    return Reply(call.remote(SERVICE, "import_roster", call.scope, school_id, filename, encoded))


# --- tokens -------------------------------------------------------------------------------------------


def list_tokens(call: Call) -> Reply:
    return _items(call.remote(SERVICE, "list_tokens", call.scope))


def issue_token(call: Call) -> Reply:
    return _created(call.remote(SERVICE, "issue_token", call.scope, call.json(accounts.TokenIn())))


def revoke_token(call: Call, token_id: int) -> Reply:
    revoked = call.remote(SERVICE, "revoke_token", call.scope, token_id)
    call.gateway.verifier.forget_token_id(token_id)  # this worker at once; others within the cache TTL
    return Reply(revoked)


ROSTER_REQUEST_BODY = {
    "required": True,
    "description": "The roster (first sheet; headers such as 工号, 姓名, 学科, 年级, 角色, 教研组). "
    "All-or-nothing: any bad row rejects the whole file with 422 and `errors: [{row, column, reason}]`.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "text/csv": {"schema": {"type": "string"}},
        XLSX_MIMETYPE: {"schema": {"type": "string", "format": "binary"}},
    },
}

ROUTES = [
    Route("GET", "/v1/me", me, "The scope of the presented token", "tokens", ScopeOut),
    Route("GET", "/v1/districts", list_districts, "Districts in the token's scope", "organisation", DistrictList),
    Route("POST", "/v1/districts", create_district, "Create a district (bureau write token)", "organisation",
          accounts.DistrictOut, 201, accounts.DistrictIn, writes=True),
    Route("GET", "/v1/schools", list_schools, "Schools in the token's scope", "organisation", SchoolList),
    Route("POST", "/v1/schools", create_school, "Create a school (bureau write token)", "organisation",
          accounts.SchoolOut, 201, accounts.SchoolIn, writes=True),
    Route("GET", "/v1/schools/<id:school_id>", get_school, "One school", "organisation", accounts.SchoolOut),
    Route("GET", "/v1/alliances", list_alliances, "Alliances (network joint schools)", "organisation",
          AllianceList),
    Route("POST", "/v1/alliances", create_alliance, "Create an alliance with a lead school", "organisation",
          accounts.AllianceOut, 201, accounts.AllianceIn, writes=True),
    Route("POST", "/v1/alliances/<id:alliance_id>/members", add_alliance_member, "Add a member school",
          "organisation", accounts.AllianceOut, 200, AllianceMemberIn, writes=True),
    Route("GET", "/v1/schools/<id:school_id>/teachers", list_teachers,
          "A page of a school's teachers (follow `next` for more)", "teachers", TeacherPage,
          query_schema=TeacherPageQuery),
    Route("POST", "/v1/schools/<id:school_id>/teachers", create_teacher,
          "Add a teacher to the school (school_id in the body may be left out)", "teachers",
          accounts.TeacherOut, 201, accounts.TeacherIn, writes=True),
    Route("GET", "/v1/teachers/<id:teacher_id>", get_teacher, "One teacher", "teachers", accounts.TeacherOut),
    Route("PATCH", "/v1/teachers/<id:teacher_id>", update_teacher, "Change a teacher (only the fields sent)",
          "teachers", accounts.TeacherOut, 200, accounts.TeacherUpdate, writes=True),
    Route("GET", "/v1/groups", list_groups, "Research groups, collaboration groups and studios", "teachers",
          GroupList, query_schema=GroupListQuery),
    Route("POST", "/v1/groups", create_group, "Create a group", "teachers", accounts.GroupOut, 201,
          accounts.GroupIn, writes=True),
    Route("POST", "/v1/schools/<id:school_id>/roster", import_roster,
          "Import a roster file (.xlsx or .csv); re-importing the same file changes nothing", "teachers",
          RosterResult, writes=True, max_body_bytes=ROSTER_BODY_LIMIT, rpc_timeout=ROSTER_RPC_TIMEOUT,
          request_body_openapi=ROSTER_REQUEST_BODY, error_statuses=(413, 415)),
    Route("GET", "/v1/tokens", list_tokens, "API tokens in the token's scope (never their secrets)", "tokens",
          TokenList),
    Route("POST", "/v1/tokens", issue_token, "Issue a token; its secret is shown only in this answer", "tokens",
          accounts.IssuedTokenOut, 201, accounts.TokenIn, writes=True),
    Route("DELETE", "/v1/tokens/<id:token_id>", revoke_token,
          "Revoke a token (other gateway workers may accept it for up to 30 s more)", "tokens",
          accounts.TokenOut, writes=True),
]
