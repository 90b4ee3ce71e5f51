"""What a route module is made of: `Route` (rule + handler + OpenAPI facts), `Call`, `Reply`.

A handler receives a `Call` (the request, the caller's verified scope, helpers to read a validated
body or query and to make RPC calls) and the path's values, and returns a `Reply` (or, rarely, a
ready Werkzeug `Response`). It never builds error responses itself: it raises, and the app turns
`LianxiaoError`/`HttpProblem` into problem+json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, fields, validate
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import IntegerConverter
from werkzeug.wrappers import Request, Response

from services.common.validation import MAX_ID, load
from services.gateway.problems import HttpProblem

if TYPE_CHECKING:
    from services.gateway.app import Gateway

JSON_BODY_LIMIT = 1024 * 1024  # 1 MiB: far above any JSON this API accepts


class IdConverter(IntegerConverter):
    """`<id:name>`: a positive 32-bit id; anything else (e.g. 10**30) is simply not a resource (404)."""

    def __init__(self, url_map: Any) -> None:
        super().__init__(url_map, min=1, max=MAX_ID)


@dataclass
class Reply:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    """One method on one path, with everything the OpenAPI document says about it."""

    method: str
    path: str  # Werkzeug rule syntax, e.g. "/v1/schools/<id:school_id>"
    handler: Callable[..., Reply | Response]
    summary: str
    tag: str
    response_schema: type[Schema] | None = None
    success_status: int = 200
    request_schema: type[Schema] | None = None
    query_schema: type[Schema] | None = None
    authenticated: bool = True
    writes: bool = False  # documents "needs a write token"; accounts enforces it
    max_body_bytes: int = JSON_BODY_LIMIT
    rpc_timeout: float | None = None  # None: the gateway's default
    request_body_openapi: dict[str, Any] | None = None  # for bodies that are not JSON (uploads)
    response_content_type: str = "application/json"
    error_statuses: tuple[int, ...] = ()
    description: str | None = None  # longer OpenAPI description (Markdown)

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


class Call:
    """One request as a handler sees it."""

    def __init__(self, gateway: Gateway, request: Request, route: Route, scope: dict[str, Any] | None) -> None:
        self.gateway = gateway
        self.request = request
        self.route = route
        self.scope = scope

    def remote(self, service: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """RPC to `service.method`, bounded by the route's timeout."""
        return self.gateway.rpc.call(service, method, *args, timeout=self.route.rpc_timeout, **kwargs)

    def body_bytes(self) -> bytes:
        """The raw body, refused with 413 when larger than the route allows (checked before reading)."""
        limit = self.route.max_body_bytes
        length = self.request.content_length
        if length is not None and length > limit:
            raise too_large(limit)
        self.request.max_content_length = limit  # also bounds chunked bodies while reading
        try:
            return self.request.get_data(cache=True)
        except RequestEntityTooLarge as error:
            raise too_large(limit) from error

    def json_value(self) -> Any:
        """The parsed JSON body (any JSON value), not yet validated."""
        mimetype = self.request.mimetype
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            raise HttpProblem(415, "Send the body as JSON with 'Content-Type: application/json'.")
        return parse_json(self.body_bytes())

    @staticmethod
    def validate(schema: Schema, data: Any) -> dict[str, Any]:
        """`data` if `schema` accepts it (422 with every field's problem otherwise), unchanged.

        The service validates again with the same schema; sending what the client sent (JSON types)
        rather than marshmallow's loaded values keeps the RPC payload plain JSON.
        """
        load(schema, data)
        out_of_range = integer_range_errors(schema, data)
        if out_of_range:
            raise HttpProblem(422, "Some numbers are out of range.", errors=out_of_range)
        return data

    def json(self, schema: Schema) -> dict[str, Any]:
        """The JSON body, validated by `schema`."""
        return self.validate(schema, self.json_value())

    def query(self, schema: Schema) -> dict[str, Any]:
        """The query string, validated (unknown or repeated parameters are refused)."""
        values: dict[str, str] = {}
        repeated = []
        for name, items in self.request.args.lists():
            if len(items) > 1:
                repeated.append({"field": name, "reason": "Given more than once."})
            values[name] = items[-1]
        if repeated:
            raise HttpProblem(422, "Some query parameters were given more than once.", errors=repeated)
        loaded = load(schema, values)
        out_of_range = integer_range_errors(schema, loaded)
        if out_of_range:
            raise HttpProblem(422, "Some numbers are out of range.", errors=out_of_range)
        return loaded


def _has_upper_bound(declared: fields.Field) -> bool:
    return any(isinstance(rule, validate.Range) and rule.max is not None for rule in declared.validators)


def integer_range_errors(schema: Schema, data: Any) -> list[dict[str, Any]]:
    """Integers the schema leaves unbounded must fit the databases' 32-bit integer columns.

    Services' schemas bound the quantities they care about (`Range`), but ids are stored as 32-bit
    integers; an id of 10**12 would otherwise reach the database and fail there as a 500.
    """
    if not isinstance(data, dict):
        return []
    problems: list[dict[str, Any]] = []
    for name, declared in schema.fields.items():
        key = declared.data_key or name
        value = data.get(key)
        if isinstance(declared, fields.List) and isinstance(declared.inner, fields.Integer) and isinstance(value, list):
            candidates = [(f"{key}.{index}", item, declared.inner) for index, item in enumerate(value)]
        elif isinstance(declared, fields.Integer):
            candidates = [(key, value, declared)]
        else:
            continue
        for path, item, integer_field in candidates:
            if isinstance(item, int) and not _has_upper_bound(integer_field) and not -MAX_ID <= item <= MAX_ID:
                problems.append({"field": path, "reason": f"Must be between {-MAX_ID} and {MAX_ID}."})
    return problems


def too_large(limit: int) -> HttpProblem:
    return HttpProblem(413, f"The request body is larger than this endpoint accepts ({limit} bytes at most).")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity; every failure is a 400 problem, never an exception."""
    if not raw.strip():
        raise HttpProblem(400, "The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HttpProblem(400, f"The request body is not UTF-8 text (byte {error.start}).") from error
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise HttpProblem(
            400, f"The request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}."
        ) from error
    except (ValueError, RecursionError) as error:  # NaN, 5000-digit integers, absurd nesting
        raise HttpProblem(400, f"The request body is not acceptable JSON: {str(error)[:200]}.") from error
