"""Routes to the activities service: recording (single and batch), reading, moderation, xAPI reads.

The gateway checks the envelope with activities' own schemas; the service validates each kind's
details, judges idempotency and scope, and answers per item in a batch.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from marshmallow import Schema, fields

from services.activities import schemas as activities
from services.gateway.problems import HttpProblem
from services.gateway.routes.base import Call, Reply, Route

SERVICE = "activities"
BATCH_RPC_TIMEOUT = 30.0  # 500 items in one transaction take longer than a single record

RecordOut = Schema.from_dict(
    {"status": fields.String(), "activity": fields.Nested(activities.ActivityOut)}, name="ActivityRecorded")
BatchItemOut = Schema.from_dict({
    "index": fields.Integer(), "id": fields.String(allow_none=True), "status": fields.String(),
    "error": fields.String(), "reason": fields.String(), "fields": fields.Dict(),
}, name="ActivityBatchItem")
BatchOut = Schema.from_dict({
    "results": fields.List(fields.Nested(BatchItemOut)), "accepted": fields.Integer(),
    "duplicate": fields.Integer(), "rejected": fields.Integer(),
}, name="ActivityBatchResult")
BatchIn = Schema.from_dict(
    {"activities": fields.List(fields.Dict(), required=True)}, name="ActivityBatch")
ActivityPage = Schema.from_dict({
    "items": fields.List(fields.Nested(activities.ActivityOut)), "next_cursor": fields.String(allow_none=True),
}, name="ActivityPage")
StatementResult = Schema.from_dict(
    {"statements": fields.List(fields.Dict()), "more": fields.String()}, name="XapiStatementResult")


def _raw_query(call: Call, schema: Schema) -> dict[str, Any]:
    """Validate the query string, then pass the client's own strings on (plain JSON over RPC)."""
    call.query(schema)
    return dict(call.request.args.items())


def record_activity(call: Call) -> Reply:
    outcome = call.remote(SERVICE, "record_activity", call.scope, call.json(activities.ActivityIn()))
    activity_id = outcome["activity"]["id"]
    status = 201 if outcome["status"] == "accepted" else 200  # a repeat returns the original
    return Reply(outcome, status, {"Location": f"/v1/activities/{activity_id}"})


def record_activities(call: Call) -> Reply:
    body = call.json_value()
    items = body.get("activities") if isinstance(body, dict) else body  # {"activities": [...]} or [...]
    if not isinstance(items, list):
        raise HttpProblem(422, "Send a JSON array of activities (or {\"activities\": [...]}).",
                          errors=[{"field": "activities", "reason": "Expected an array."}])
    return Reply(call.remote(SERVICE, "record_activities", call.scope, items))


def list_activities(call: Call) -> Reply:
    page = call.remote(SERVICE, "list_activities", call.scope, _raw_query(call, activities.ActivityQuery()))
    headers: dict[str, str] = {}
    if page.get("next_cursor"):
        params = {**call.request.args, "cursor": page["next_cursor"]}
        headers["Link"] = f'<{call.request.path}?{urlencode(params)}>; rel="next"'
    return Reply(page, headers=headers)


def get_activity(call: Call, activity_id: UUID) -> Reply:
    return Reply(call.remote(SERVICE, "get_activity", call.scope, str(activity_id)))


def hide_activity(call: Call, activity_id: UUID) -> Reply:
    body = call.json(activities.HideIn())
    return Reply(call.remote(SERVICE, "hide_activity", call.scope, str(activity_id), body))


def xapi_statements(call: Call) -> Reply:
    """xAPI 1.0.x: the version header is required on requests and sent on every answer."""
    version = call.request.headers.get("X-Experience-API-Version", "")
    headers = {"X-Experience-API-Version": activities.XAPI_VERSION}
    if not version.startswith("1.0"):
        raise HttpProblem(
            400, f"Send 'X-Experience-API-Version: 1.0.x' (this server speaks {activities.XAPI_VERSION}).",
            headers=headers)
    result = call.remote(SERVICE, "query_statements", call.scope, _raw_query(call, activities.StatementQuery()))
    return Reply(result, headers=headers)


ROUTES = [
    Route("POST", "/v1/activities", record_activity,
          "Record one activity (201; 200 with the original when the same id and content were sent before)",
          "activities", RecordOut, 201, activities.ActivityIn, writes=True, error_statuses=(409,)),
    Route("POST", "/v1/activities/batch", record_activities,
          "Record up to 500 activities; each is accepted, duplicate or rejected with its reason",
          "activities", BatchOut, 200, BatchIn, writes=True, rpc_timeout=BATCH_RPC_TIMEOUT),
    Route("GET", "/v1/activities", list_activities,
          "Activities by teacher, school, group, kind and time (follow next_cursor)", "activities",
          ActivityPage, query_schema=activities.ActivityQuery),
    Route("GET", "/v1/activities/<uuid:activity_id>", get_activity, "One activity", "activities",
          activities.ActivityOut),
    Route("POST", "/v1/activities/<uuid:activity_id>/hide", hide_activity,
          "Hide a comment or blog post (moderator, with a reason); it stays recorded", "activities",
          activities.ActivityOut, 200, activities.HideIn, writes=True),
    Route("GET", "/xapi/statements", xapi_statements,
          "xAPI statements (agent, verb, activity, since, until, limit, ascending; follow `more`)", "xapi",
          StatementResult, query_schema=activities.StatementQuery),
]
