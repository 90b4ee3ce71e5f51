"""Every error the gateway returns is RFC 9457 `application/problem+json`.

Members: `type` (a URI per kind of problem), `title`, `status`, `detail` (what went wrong, in words a
school's IT person can act on), `instance` (the request path) and, when input was at fault,
`errors`: a list of `{"field", "reason"}` for JSON bodies and query strings, or
`{"row", "column", "reason"}` for uploaded roster files.

Domain errors (`services.common.errors.LianxiaoError`, typed across RPC) map by their `.status`;
Werkzeug's HTTP errors (unknown route, wrong method, oversized body) by theirs. Anything else is a bug:
it is logged with a traceback and answered with a 500 problem that tells nothing internal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Response

from services.common.errors import LianxiaoError

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://lianxiao.example/problems/"
PROBLEM_MIMETYPE = "application/problem+json"

# One short, stable slug per status; clients may switch on `type`.
TYPE_SLUGS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    429: "too-many-requests",
    500: "internal-error",
    503: "service-unavailable",
}
TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class HttpProblem(Exception):
    """Raised by gateway code to answer with a problem; carries optional response headers."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})
        self.title = title or TITLES.get(status, "Error")


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + TYPE_SLUGS.get(status, "error"),
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    response = Response(
        json.dumps(body, ensure_ascii=False), status=status, mimetype=PROBLEM_MIMETYPE
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def field_errors(messages: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Flatten marshmallow's nested messages into `[{"field": "a.0.b", "reason": ...}]`."""
    if isinstance(messages, Mapping):
        flat: list[dict[str, Any]] = []
        for key, value in messages.items():
            name = str(key) if not prefix else f"{prefix}.{key}"
            flat.extend(field_errors(value, name))
        return flat
    if isinstance(messages, list | tuple) and all(isinstance(item, str) for item in messages):
        return [{"field": prefix or "_schema", "reason": str(item)} for item in messages]
    if isinstance(messages, Iterable) and not isinstance(messages, str):
        flat = []
        for item in messages:
            flat.extend(field_errors(item, prefix))
        return flat
    return [{"field": prefix or "_schema", "reason": str(messages)}]


def row_errors(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Roster problems as sent by accounts: keep row, column and reason, nothing else."""
    return [
        {"row": row.get("row"), "column": row.get("column"), "reason": str(row.get("reason", ""))}
        for row in rows
        if isinstance(row, Mapping)
    ]


def from_domain_error(error: LianxiaoError, instance: str | None = None) -> Response:
    fields = error.fields if isinstance(error.fields, Mapping) else {}
    rows = fields.get("rows")
    errors = row_errors(rows) if isinstance(rows, list) else field_errors(fields)
    headers = {}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if error.status == 503:
        headers["Retry-After"] = "5"
    if error.status == 429:
        headers["Retry-After"] = "60"
    status = error.status if 400 <= error.status <= 599 else 500
    return problem_response(
        status, error.detail or error.title, title=error.title, errors=errors, headers=headers, instance=instance
    )


def from_http_problem(problem: HttpProblem, instance: str | None = None) -> Response:
    return problem_response(
        problem.status, problem.detail, title=problem.title, errors=problem.errors,
        headers=problem.headers, instance=instance,
    )


def from_http_exception(error: HTTPException, instance: str | None = None) -> Response:
    """Werkzeug's own errors (routing, body limits) as problems; redirects pass through unchanged."""
    if isinstance(error, RequestRedirect):
        return error.get_response()
    status = error.code or 500
    headers: dict[str, str] = {}
    detail = error.description or TITLES.get(status, "Error")
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        allowed = ", ".join(sorted(error.valid_methods))
        headers["Allow"] = allowed
        detail = f"This resource allows {allowed}."
    elif status == 404:
        detail = "No such resource; see /openapi.json for every route."
    elif status == 413:
        detail = "The request body is larger than this endpoint accepts."
    return problem_response(status, detail, headers=headers, instance=instance)


def internal_error(instance: str | None = None) -> Response:
    return problem_response(
        500, "The gateway failed unexpectedly; the error was logged. Please try again later.", instance=instance
    )
