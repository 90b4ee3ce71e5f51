"""Routes to the classroom_relay service: classrooms, sessions, branches joining, join tokens, SDP.

The relay decides who may see and change what (it receives the caller's scope on every call); these
handlers validate bodies with the relay's own schemas first and send what the client sent.
"""

from __future__ import annotations

from typing import Any

from werkzeug.wrappers import Response

from services.classroom_relay import schemas as relay
from services.gateway.routes.base import Call, Reply, Route
from services.gateway.schemas import list_of

SERVICE = "classroom_relay"
ClassroomList = list_of(relay.ClassroomOut, "ClassroomList")
SessionList = list_of(relay.SessionOut, "SessionList")


def _body_or_empty(call: Call, schema: Any) -> dict[str, Any]:
    """Optional JSON bodies (join, token): an empty request means 'all defaults'."""
    if not call.request.content_length and not call.request.get_data(cache=True):
        return call.validate(schema, {})
    return call.json(schema)


def list_classrooms(call: Call) -> Reply:
    return Reply({"items": call.remote(SERVICE, "list_classrooms", call.scope)})


def create_classroom(call: Call) -> Reply:
    room = call.remote(SERVICE, "create_classroom", call.scope, call.json(relay.ClassroomIn()))
    return Reply(room, 201, {"Location": f"/v1/classrooms/{room['id']}"})


def get_classroom(call: Call, classroom_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "get_classroom", call.scope, classroom_id))


def list_sessions(call: Call) -> Reply:
    query = call.query(relay.SessionListQuery())
    return Reply({"items": call.remote(SERVICE, "list_sessions", call.scope, query["status"])})


def create_session(call: Call) -> Reply:
    created = call.remote(SERVICE, "create_session", call.scope, call.json(relay.SessionIn()))
    return Reply(created, 201, {"Location": f"/v1/sessions/{created['id']}"})


def get_session(call: Call, session_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "get_session", call.scope, session_id))


def start_session(call: Call, session_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "start_session", call.scope, session_id))


def end_session(call: Call, session_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "end_session", call.scope, session_id))


def set_recording(call: Call, session_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "set_recording", call.scope, session_id, call.json(relay.RecordingIn())))


def join_branch(call: Call, session_id: int, classroom_id: int) -> Reply:
    body = _body_or_empty(call, relay.JoinIn())
    return Reply(call.remote(SERVICE, "join_branch", call.scope, session_id, classroom_id, body))


def leave_branch(call: Call, session_id: int, classroom_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "leave_branch", call.scope, session_id, classroom_id))


def issue_join_token(call: Call, session_id: int, classroom_id: int) -> Reply:
    body = _body_or_empty(call, relay.TokenIn())
    return Reply(call.remote(SERVICE, "issue_join_token", call.scope, session_id, classroom_id, body), 201)


def rtmp_publish_point(call: Call, session_id: int, classroom_id: int) -> Reply:
    return Reply(call.remote(SERVICE, "rtmp_publish_point", call.scope, session_id, classroom_id), 201)


def register_sender(call: Call, session_id: int, classroom_id: int) -> Reply:
    body = call.json(relay.SenderIn())
    return Reply(call.remote(SERVICE, "register_sender", call.scope, session_id, classroom_id, body))


def get_sdp(call: Call, session_id: int, classroom_id: int) -> Response:
    answer = call.remote(SERVICE, "get_sdp", call.scope, session_id, classroom_id)
    return Response(
        answer["sdp"], 200, mimetype="application/sdp",
        headers={"Content-Disposition": f'attachment; filename="session-{session_id}-classroom-{classroom_id}.sdp"'},
    )


SESSION = "/v1/sessions/<id:session_id>"
BRANCH = SESSION + "/classrooms/<id:classroom_id>"
ROUTES = [
    Route("GET", "/v1/classrooms", list_classrooms, "Classrooms in the token's scope", "relay", ClassroomList),
    Route("POST", "/v1/classrooms", create_classroom,
          "Register a broadcasting or receiving classroom and its link capacities", "relay",
          relay.ClassroomOut, 201, relay.ClassroomIn, writes=True),
    Route("GET", "/v1/classrooms/<id:classroom_id>", get_classroom, "One classroom", "relay", relay.ClassroomOut),
    Route("GET", "/v1/sessions", list_sessions, "Live-teaching sessions", "relay", SessionList,
          query_schema=relay.SessionListQuery),
    Route("POST", "/v1/sessions", create_session,
          "Schedule a dedicated delivery, master-teacher or online research session", "relay",
          relay.SessionOut, 201, relay.SessionIn, writes=True, error_statuses=(409,)),
    Route("GET", SESSION, get_session, "One session and its classrooms", "relay", relay.SessionOut),
    Route("POST", SESSION + "/start", start_session,
          "Start the session (admission control may refuse it with 409 and the numbers)", "relay",
          relay.SessionOut, writes=True, error_statuses=(409,)),
    Route("POST", SESSION + "/end", end_session, "End the session (recurring ones go back to scheduled)",
          "relay", relay.SessionOut, writes=True),
    Route("PUT", SESSION + "/recording", set_recording,
          "Keep this session's lessons as recordings (录播) or not; while it is live the running recording ends "
          "and one with the new choice starts (the recorder stays attached for patrol either way)", "relay",
          relay.SessionOut, 200, relay.RecordingIn, writes=True),
    Route("PUT", BRANCH, join_branch,
          "Join a branch classroom (409 with the link, capacity and committed bandwidth when it does not fit)",
          "relay", relay.MemberOut, 200, relay.JoinIn, writes=True, error_statuses=(409,)),
    Route("DELETE", BRANCH, leave_branch, "A branch classroom leaves the session", "relay", relay.MemberOut,
          writes=True),
    Route("POST", BRANCH + "/join-token", issue_join_token,
          "A join token for this classroom's encoder (send `hello` from its RTP port to `media_address`, the "
          "session's data plane, once the session is live)", "relay",
          relay.JoinTokenOut, 201, relay.TokenIn, writes=True),
    Route("POST", BRANCH + "/rtmp-publish", rtmp_publish_point,
          "The RTMP server URL and stream key a live session's broadcasting classroom configures its recording "
          "host with (the key is this classroom's, for this lesson, and expires with it)", "relay",
          relay.RtmpPublishOut, 201, writes=True, error_statuses=(409,)),
    Route("PUT", BRANCH + "/sender", register_sender,
          "Register the source address of one track's encoder (it needs no hello then); replaces that track's "
          "earlier sender — the hand-over when an encoder restarts on another port", "relay",
          relay.SenderOut, 200, relay.SenderIn, writes=True),
    Route("GET", BRANCH + "/sdp", get_sdp,
          "The SDP a live classroom (master or branch) plays: one m= section per track it receives, labelled "
          "classroom-<id>/<track> (application/sdp)",
          "relay", response_content_type="application/sdp", error_statuses=(409, 503)),
]
