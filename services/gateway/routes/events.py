"""Routes about the event stream: replay into a bureau subscriber's own queue (services/common/replay.py).

The bureau comes from the token, never from the body. Each service replays its own exchange; the
answer has one result per exchange asked for.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from services.common.replay_schemas import ReplayIn
from services.gateway.routes.base import Call, Reply, Route

REPLAY_RPC_TIMEOUT = 60.0  # 10 000 confirmed publishes per exchange take seconds, not milliseconds
EXCHANGES = {"activities.events": "activities", "accounts.events": "accounts",
             "classroom_relay.events": "classroom_relay", "resources.events": "resources"}


class ReplayRequest(ReplayIn):
    exchanges = fields.List(fields.String(validate=validate.OneOf(sorted(EXCHANGES))),
                            load_default=lambda: sorted(EXCHANGES), validate=validate.Length(min=1, max=len(EXCHANGES)))


ReplayedExchange = Schema.from_dict({
    "exchange": fields.String(), "bindings": fields.List(fields.String()), "republished": fields.Integer(),
    "complete": fields.Boolean(), "last_event_time": fields.String(allow_none=True),
}, name="ReplayedExchange")
ReplayOut = Schema.from_dict({
    "queue": fields.String(), "republished": fields.Integer(), "complete": fields.Boolean(),
    "exchanges": fields.List(fields.Nested(ReplayedExchange)),
}, name="ReplayResult")


def replay_events(call: Call) -> Reply:
    body: dict[str, Any] = call.json(ReplayRequest())
    request = {key: value for key, value in body.items() if key != "exchanges"}
    exchanges = sorted(set(body.get("exchanges") or EXCHANGES))
    results = [call.remote(EXCHANGES[name], "replay_events", call.scope, request) for name in exchanges]
    return Reply({
        "queue": body["queue"], "republished": sum(result["republished"] for result in results),
        "complete": all(result["complete"] for result in results), "exchanges": results,
    })


ROUTES = [
    Route("POST", "/v1/events/replay", replay_events,
          "Deliver the token's bureau's events since a time again into an existing queue: only what the "
          "queue's bureau bindings select, with the live routing keys and headers (bureau token)", "events",
          ReplayOut, 200, ReplayRequest, rpc_timeout=REPLAY_RPC_TIMEOUT, error_statuses=(404,)),
]
