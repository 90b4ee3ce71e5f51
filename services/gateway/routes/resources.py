"""Routes to the resources service: the resource library, clips, playback, patrol, watches, retention.

The resources service decides who may see and change what (it receives the caller's scope on every
call); these handlers validate bodies and queries with its own schemas first (docs/recording.md).
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema
from werkzeug.wrappers import Response

from services.gateway.routes.base import Call, Reply, Route
from services.resources import schemas as resources

SERVICE = "resources"


def _query(call: Call, schema: Schema) -> dict[str, str]:
    """The query string as sent (JSON strings over RPC), once the schema accepted it."""
    call.query(schema)
    return {name: values[-1] for name, values in call.request.args.lists()}


def no_content() -> Response:
    return Response(status=204)


def search_resources(call: Call) -> Reply:
    return Reply(call.remote(SERVICE, "search_resources", call.scope, _query(call, resources.ResourceQuery())))


def get_resource(call: Call, resource_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "get_resource", call.scope, resource_id))


def update_resource(call: Call, resource_id: int) -> Reply:
    body = call.json(resources.ResourcePatch())
    return Reply(call.remote(SERVICE, "update_resource", call.scope, resource_id, body))


def add_clip(call: Call, resource_id: int) -> Reply:
    clip = call.remote(SERVICE, "add_clip", call.scope, resource_id, call.json(resources.ClipIn()))
    return Reply(clip, 201, {"Location": f"/v1/resources/{resource_id}/clips/{clip['id']}"})


def delete_clip(call: Call, resource_id: int, clip_id: int) -> Response:
    call.remote(SERVICE, "delete_clip", call.scope, resource_id, clip_id)
    return no_content()


def playback(call: Call, resource_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "playback", call.scope, resource_id), headers={"Cache-Control": "no-store"})


def patrol_sessions(call: Call) -> Reply:
    return Reply(call.remote(SERVICE, "patrol_sessions", call.scope), headers={"Cache-Control": "no-store"})


def start_watch(call: Call) -> Reply:
    watch = call.remote(SERVICE, "start_watch", call.scope, call.json(resources.WatchIn()))
    return Reply(watch, 201, {"Location": f"/v1/watches/{watch['id']}"})


def heartbeat(call: Call, watch_id: Any) -> Response:
    call.remote(SERVICE, "heartbeat", call.scope, str(watch_id), call.json(resources.HeartbeatIn()))
    return no_content()


def end_watch(call: Call, watch_id: Any) -> Response:
    call.remote(SERVICE, "end_watch", call.scope, str(watch_id))
    return no_content()


def list_watches(call: Call) -> Reply:
    return Reply(call.remote(SERVICE, "list_watches", call.scope, _query(call, resources.WatchQuery())))


def get_retention(call: Call) -> Reply:
    return Reply(call.remote(SERVICE, "get_retention", call.scope))


def set_retention(call: Call) -> Reply:
    return Reply(call.remote(SERVICE, "set_retention", call.scope, call.json(resources.RetentionIn())))


RESOURCE = "/v1/resources/<id:resource_id>"
WATCH = "/v1/watches/<uuid:watch_id>"
ROUTES = [
    Route("GET", "/v1/resources", search_resources,
          "Recorded lessons visible to the token (its own scope's, and what alliance partners share), newest "
          "first; filter by school, teacher, subject, grade, date range and text in the title or subject",
          "resources", resources.ResourceList, query_schema=resources.ResourceQuery),
    Route("GET", "/v1/resources/retention", get_retention,
          "How many days the token's bureau keeps recordings not marked `kept`", "resources",
          resources.RetentionOut),
    Route("PUT", "/v1/resources/retention", set_retention,
          "Set how many days the bureau keeps recordings not marked `kept` (bureau write token)", "resources",
          resources.RetentionOut, 200, resources.RetentionIn, writes=True),
    Route("GET", RESOURCE, get_resource, "One recorded lesson with its knowledge-point clips", "resources",
          resources.ResourceOut),
    Route("PATCH", RESOURCE, update_resource,
          "Title, subject, grade; `shared` shares it with the school's alliance partners (publishes "
          "resource.published); `kept` exempts it from retention. Its school, district or bureau only",
          "resources", resources.ResourceOut, 200, resources.ResourcePatch, writes=True),
    Route("POST", RESOURCE + "/clips", add_clip,
          "Mark a knowledge-point clip (0 <= start < end <= the recording's duration)", "resources",
          resources.ClipOut, 201, resources.ClipIn, writes=True, error_statuses=(409,)),
    Route("DELETE", RESOURCE + "/clips/<id:clip_id>", delete_clip, "Remove a clip", "resources",
          success_status=204, writes=True),
    Route("GET", RESOURCE + "/playback", playback,
          "Signed, expiring URLs: HLS playlist, MP4 (HTTP Range), courseware, and each clip's MP4 cut",
          "resources", resources.PlaybackOut, error_statuses=(503,)),
    Route("GET", "/v1/patrol/sessions", patrol_sessions,
          "Live lessons being recorded in the token's scope, each with a signed live HLS playlist (巡课)",
          "resources", resources.PatrolList, error_statuses=(503,)),
    Route("POST", "/v1/watches", start_watch,
          "Start watching a live session or a recording; report heartbeats every `heartbeat_seconds`. A "
          "teacher's watch (`viewer_teacher_id`) long enough becomes a lesson observation", "resources",
          resources.WatchOut, 201, resources.WatchIn),
    Route("GET", "/v1/watches", list_watches,
          "Who watched which lesson for how long and what it counted as, in the token's scope", "resources",
          resources.WatchList, query_schema=resources.WatchQuery),
    Route("POST", WATCH + "/heartbeat", heartbeat,
          "Seconds watched since the last heartbeat (credited at most the time that has passed)", "resources",
          success_status=204, request_schema=resources.HeartbeatIn, error_statuses=(409,)),
    Route("POST", WATCH + "/end", end_watch, "Stop watching", "resources", success_status=204),
]
