"""`/openapi.json`: the OpenAPI 3 document, generated from the routes and the services' own schemas.

Nothing here is written by hand per endpoint: every `Route` contributes its path, parameters, request
and response schemas (marshmallow, through apispec's MarshmallowPlugin), and the problem responses it
can give, so the document cannot drift from what the gateway does.
"""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from services.common.validation import MAX_ID
from services.gateway.problems import PROBLEM_MIMETYPE, TITLES
from services.gateway.routes.base import Route
from services.gateway.schemas import Problem

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"
RULE_VARIABLE = re.compile(r"<(?:(?P<converter>[a-z_]+):)?(?P<name>[a-z_][a-z0-9_]*)>")

DESCRIPTION = """The public API of lianxiao for schools, districts and the bureau.

Authenticate every `/v1` request with `Authorization: Bearer <token>`. A token's scope (school,
district or bureau) decides what it may see; only `write` tokens may change data. Errors are
`application/problem+json` (RFC 9457); input errors list every field (`errors[].field`) or roster row
(`errors[].row`, `errors[].column`). Each token is rate limited (see the `RateLimit-*` headers; 429 comes
with `Retry-After`). A revoked token may keep working for up to 30 s (gateway cache)."""


def openapi_path(rule: str) -> str:
    """`/v1/schools/<id:school_id>` → `/v1/schools/{school_id}`."""
    return RULE_VARIABLE.sub(lambda match: "{" + match["name"] + "}", rule)


def _path_parameters(rule: str) -> list[dict[str, Any]]:
    parameters = []
    for match in RULE_VARIABLE.finditer(rule):
        schema: dict[str, Any] = {"type": "string"}
        if match["converter"] in ("id", "int"):
            schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        parameters.append({"in": "path", "name": match["name"], "required": True, "schema": schema})
    return parameters


def _problem(status: int) -> dict[str, Any]:
    return {"description": TITLES.get(status, "Error"), "content": {PROBLEM_MIMETYPE: {"schema": "Problem"}}}


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": re.sub(r"\W+", "_", f"{route.method.lower()}{openapi_path(route.path)}").strip("_"),
    }
    parameters = _path_parameters(route.path)
    if route.query_schema is not None:
        parameters.append({"in": "query", "schema": route.query_schema})
    if parameters:
        operation["parameters"] = parameters
    if route.request_body_openapi is not None:
        operation["requestBody"] = route.request_body_openapi
    elif route.request_schema is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.request_schema}}}

    success: dict[str, Any] = {"description": {200: "OK", 204: "No content"}.get(route.success_status, "Created")}
    if route.response_schema is not None:
        success["content"] = {route.response_content_type: {"schema": route.response_schema}}
    responses: dict[str, Any] = {str(route.success_status): success}
    statuses = set(route.error_statuses) | {500}
    if route.authenticated:
        statuses |= {401, 403, 429, 503}
        operation["security"] = [{"bearerAuth": []}, {"basicAuth": []}]  # either: see auth.py
    else:
        operation["security"] = []
    if "<" in route.path or route.query_schema is not None:
        # A path, or a query filter such as ?school_id=, may name something that does not exist.
        statuses.add(404)
    if route.query_schema is not None or route.request_schema is not None or route.request_body_openapi:
        statuses |= {400, 422}
    if route.request_schema is not None or route.request_body_openapi:
        statuses |= {413, 415}
    if route.writes:
        # 404 as well: a body may name a district, school or teacher that does not exist.
        statuses |= {404, 409}
    for status in sorted(statuses):
        responses[str(status)] = _problem(status)
    # gunicorn itself refuses request lines over 4094 bytes (before the app, so not as a problem).
    responses["414"] = {"description": "URI too long (refused by the HTTP server)"}
    operation["responses"] = responses
    notes = [route.description] if route.description else []
    if route.writes:
        notes.append("Needs a `write` token.")
    if notes:
        operation["description"] = "\n\n".join(notes)
    return operation


def build_spec(routes: list[Route]) -> dict[str, Any]:
    spec = APISpec(
        title="lianxiao API",
        version=API_VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
    )
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("basicAuth", {
        "type": "http", "scheme": "basic", "description": "The API token as the password (for xAPI tools)."})
    spec.components.schema("Problem", schema=Problem)
    operations_by_path: dict[str, dict[str, Any]] = {}
    for route in routes:
        operations_by_path.setdefault(openapi_path(route.path), {})[route.method.lower()] = _operation(route)
    for path, operations in operations_by_path.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
