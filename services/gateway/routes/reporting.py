"""Routes to the reporting service: teacher progress, school compliance, bulletins and their downloads, rules.

Reporting decides who may see what (it receives the caller's scope on every call): a school sees
itself, a district its schools, the bureau everything. These handlers validate the period and other
input with reporting's own schemas first, so a malformed period is answered without an RPC.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from werkzeug.wrappers import Response

from services.gateway.routes.base import Call, Reply, Route
from services.reporting import schemas as reporting

SERVICE = "reporting"
# A city's bulletin judges tens of thousands of teachers, twice (this period and the last): allow more
# than a single-row read.
REPORT_RPC_TIMEOUT = 30.0
XLSX_MIMETYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _period(call: Call) -> dict[str, str]:
    return reporting.period_of_query(call.query(reporting.PeriodQuery())["period"])


def _bulletin_period(call: Call, kind: str, key: str) -> dict[str, str]:
    return call.validate(reporting.PeriodIn(), call.validate(reporting.BulletinPath(), {"kind": kind, "key": key}))


def _rules_target(call: Call) -> dict[str, Any]:
    query = call.query(reporting.RuleSetQuery())
    return {"scope_kind": query["scope_kind"], "scope_id": query["scope_id"]}


def teacher_progress(call: Call, teacher_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "teacher_progress", call.scope, teacher_id, _period(call)))


def school_compliance(call: Call, school_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "school_compliance", call.scope, school_id, _period(call)))


def get_bulletin(call: Call, kind: str, key: str) -> Reply:
    return Reply(call.remote(SERVICE, "get_bulletin", call.scope, _bulletin_period(call, kind, key)))


def attachment(filename: str, display_filename: str) -> str:
    """Content-Disposition naming the file twice: ASCII for old clients, UTF-8 (RFC 6266 / 5987) for the rest."""
    return f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quote(display_filename, safe='')}"


def _download(call: Call, kind: str, key: str, file_format: str, section: str | None = None) -> Response:
    request: dict[str, Any] = {**_bulletin_period(call, kind, key), "format": file_format}
    if section is not None:
        request["section"] = section
    download = call.remote(SERVICE, "export_bulletin", call.scope, request)
    return Response(
        base64.b64decode(download["content_base64"]), 200, content_type=download["content_type"],
        headers={"Content-Disposition": attachment(download["filename"], download["display_filename"])},
    )


def bulletin_csv(call: Call, kind: str, key: str) -> Response:
    return _download(call, kind, key, "csv", call.query(reporting.CsvSectionQuery())["section"])


def bulletin_xlsx(call: Call, kind: str, key: str) -> Response:
    return _download(call, kind, key, "xlsx")


def get_rules(call: Call) -> Reply:
    return Reply(call.remote(SERVICE, "get_rules", call.scope, _rules_target(call)))


def put_rules(call: Call) -> Reply:
    # Rule sets are validated by reporting (every problem named by its place, e.g. `rules.2.minimum`).
    return Reply(call.remote(SERVICE, "put_rules", call.scope, call.json_value(), _rules_target(call)))


BULLETIN = "/v1/bulletins/<kind>/<key>"
RULES_DESCRIPTION = (
    "A rule set is versioned: every change stores a new version and a report names the version that "
    "judged it. It holds the time zone and terms, the rules (`rules`), which of them decide a school's "
    "20 % rule (`school_rule_ids`), the share that makes a school non-compliant, and `credits`: for every "
    "activity kind what it credits as study hours — `duration` (its recorded time, online or offline by "
    "its mode), `per_activity` (`minutes` of `mode` study hours each) or `none`. Time is summed exactly "
    "in seconds and rounded only for display. The documents' default credit table:\n\n"
    + reporting.credit_table_text()
)
ROUTES = [
    Route("GET", "/v1/teachers/<id:teacher_id>/progress", teacher_progress,
          "A teacher's progress against every rule that applies to them (done / required / missing)", "reporting",
          query_schema=reporting.PeriodQuery, rpc_timeout=REPORT_RPC_TIMEOUT),
    Route("GET", "/v1/schools/<id:school_id>/compliance", school_compliance,
          "A school's compliance: share of compliant teachers, the 20 % rule, groups, weekly activity",
          "reporting", query_schema=reporting.PeriodQuery, rpc_timeout=REPORT_RPC_TIMEOUT),
    Route("GET", BULLETIN, get_bulletin,
          "The monthly bulletin (kind month, key YYYY-MM) or term summary (kind term, key its code)",
          "reporting", rpc_timeout=REPORT_RPC_TIMEOUT, error_statuses=(422,)),
    Route("GET", BULLETIN + ".csv", bulletin_csv,
          "One section of the bulletin as CSV (UTF-8 with BOM; ?section=schools by default)", "reporting",
          query_schema=reporting.CsvSectionQuery, rpc_timeout=REPORT_RPC_TIMEOUT,
          response_content_type="text/csv"),
    Route("GET", BULLETIN + ".xlsx", bulletin_xlsx,
          "The bulletin as an XLSX workbook, a sheet per section", "reporting",
          rpc_timeout=REPORT_RPC_TIMEOUT, response_content_type=XLSX_MIMETYPE, error_statuses=(422,)),
    Route("GET", "/v1/rules", get_rules, "The quota rules in force (bureau's, or a district's / alliance's)",
          "reporting", query_schema=reporting.RuleSetQuery, description=RULES_DESCRIPTION),
    Route("PUT", "/v1/rules", put_rules,
          "Store a new version of the quota rules (bureau write token); past reports keep their version",
          "reporting", query_schema=reporting.RuleSetQuery, writes=True, description=RULES_DESCRIPTION,
          request_body_openapi={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}),
]
