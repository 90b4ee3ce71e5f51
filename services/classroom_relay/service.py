"""The classroom_relay control plane: RPC entrypoints only.

The logic lives in plain modules: classrooms.py, lessons.py (with link_budgets.py and placement.py),
media_access.py, stream_health.py; dataplane_client.py keeps the data planes in step (dataplane_state.py).

Every entrypoint takes the caller's scope dict first (as accounts does). Changes commit inside the
entrypoint, then ask the data-plane link to push the new desired state to every data plane (each gets
the sessions placed on it; placement.py). A timer compares the data planes' stats with each live branch
and publishes `stream.degraded` / `stream.recovered`, and refreshes the placement metrics.
"""

from __future__ import annotations

from typing import Any

from nameko.rpc import RpcProxy
from nameko.timer import timer

from services.classroom_relay import (
    classrooms,
    ingest_state,
    lessons,
    media_access,
    recordings,
    settings,
    stream_health,
)
from services.classroom_relay.dataplane_client import DataPlaneLink
from services.classroom_relay.models import outbox
from services.classroom_relay.school_facts import AccountsFacts
from services.common.db import Database
from services.common.entrypoints import rpc
from services.common.events import OutboxRelay
from services.common.health import HealthRpc
from services.common.metrics import ServiceMetrics
from services.common.replay import ReplayRpc
from services.common.scope import Scope

HEALTH_CHECK_SECONDS = settings.HEALTH_INTERVAL.get()
ACCOUNTS_TIMEOUT_SECONDS = settings.ACCOUNTS_TIMEOUT.get()


class ClassroomRelayService(HealthRpc, ReplayRpc):
    name = "classroom_relay"

    db = Database("classroom_relay")
    metrics = ServiceMetrics("classroom_relay")
    events = OutboxRelay(outbox)
    dataplane = DataPlaneLink("classroom_relay")
    accounts = RpcProxy("accounts")  # schools' and teachers' facts, always through AccountsFacts (bounded)

    def _facts(self) -> AccountsFacts:
        return AccountsFacts(self.accounts, ACCOUNTS_TIMEOUT_SECONDS)

    # --- classrooms -------------------------------------------------------------------------------------
    @rpc
    def create_classroom(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return classrooms.create_classroom(self.db, Scope.from_dict(scope), data, self._facts())

    @rpc
    def get_classroom(self, scope: dict, classroom_id: int) -> dict[str, Any]:
        return classrooms.get_classroom(self.db, Scope.from_dict(scope), classroom_id)

    @rpc
    def list_classrooms(self, scope: dict, school_id: int | None = None) -> list[dict[str, Any]]:
        return classrooms.list_classrooms(self.db, Scope.from_dict(scope), school_id)

    @rpc
    def set_school_link(self, scope: dict, school_id: int, link_capacity_bps: int) -> dict[str, Any]:
        with self.db.begin():
            return classrooms.set_school_link(
                self.db, Scope.from_dict(scope), school_id, link_capacity_bps, self._facts()
            )

    # --- sessions ---------------------------------------------------------------------------------------
    @rpc
    def create_session(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return lessons.create_session(self.db, Scope.from_dict(scope), data, self.dataplane.settings, self._facts())

    @rpc
    def get_session(self, scope: dict, session_id: int) -> dict[str, Any]:
        return lessons.get_session(self.db, Scope.from_dict(scope), session_id)

    @rpc
    def list_sessions(self, scope: dict, status: str | None = None) -> list[dict[str, Any]]:
        return lessons.list_sessions(self.db, Scope.from_dict(scope), status)

    @rpc
    def start_session(self, scope: dict, session_id: int) -> dict[str, Any]:
        with self.db.begin():
            result = lessons.start_session(
                self.db, Scope.from_dict(scope), session_id, self.dataplane.settings, fleet=self.dataplane.fleet()
            )
        self.dataplane.request_push()
        return result

    @rpc
    def end_session(self, scope: dict, session_id: int) -> dict[str, Any]:
        with self.db.begin():
            result = lessons.end_session(self.db, Scope.from_dict(scope), session_id)
        self.dataplane.request_push()
        return result

    @rpc
    def set_recording(self, scope: dict, session_id: int, data: dict) -> dict[str, Any]:
        """Keep the session's lessons as recordings or not (while live: the running recording switches)."""
        with self.db.begin():
            result = recordings.set_recording(self.db, Scope.from_dict(scope), session_id, data)
        self.dataplane.request_push()
        return result

    @rpc
    def join_branch(self, scope: dict, session_id: int, classroom_id: int, data: dict | None = None) -> dict[str, Any]:
        with self.db.begin():
            result = lessons.join_branch(
                self.db, Scope.from_dict(scope), session_id, classroom_id, data, self.dataplane.settings,
                self._facts(),
            )
        self.dataplane.request_push()
        return result

    @rpc
    def leave_branch(self, scope: dict, session_id: int, classroom_id: int) -> dict[str, Any]:
        with self.db.begin():
            result = lessons.leave_branch(self.db, Scope.from_dict(scope), session_id, classroom_id)
        self.dataplane.request_push()
        return result

    # --- getting media in and out -------------------------------------------------------------------------
    @rpc
    def issue_join_token(
        self, scope: dict, session_id: int, classroom_id: int, data: dict | None = None
    ) -> dict[str, Any]:
        return media_access.issue_join_token(
            self.db, Scope.from_dict(scope), session_id, classroom_id, data, self.dataplane.settings,
            media_addresses=self.dataplane.media_addresses(),
        )

    @rpc
    def rtmp_publish_point(self, scope: dict, session_id: int, classroom_id: int) -> dict[str, Any]:
        return ingest_state.rtmp_publish_point(
            self.db, Scope.from_dict(scope), session_id, classroom_id, self.dataplane.settings,
            self.dataplane.ingest.rtmp_urls,
        )

    @rpc
    def register_sender(self, scope: dict, session_id: int, classroom_id: int, data: dict) -> dict[str, Any]:
        with self.db.begin():
            result = media_access.register_sender(
                self.db, Scope.from_dict(scope), session_id, classroom_id, data, self.dataplane.settings
            )
        self.dataplane.request_push()
        return result

    @rpc
    def get_sdp(self, scope: dict, session_id: int, classroom_id: int) -> dict[str, str]:
        """Any live classroom's SDP (the master's too): one m= section per track it receives."""
        sdp = media_access.classroom_sdp(
            self.db, Scope.from_dict(scope), session_id, classroom_id, self.dataplane.outputs_by_dataplane()
        )
        return {"content_type": "application/sdp", "sdp": sdp}

    @rpc
    def get_branch_sdp(self, scope: dict, session_id: int, classroom_id: int) -> dict[str, str]:
        return self.get_sdp(scope, session_id, classroom_id)  # the name before the master had an SDP too

    @rpc
    def relay_status(self, scope: dict) -> dict[str, Any]:
        Scope.from_dict(scope)  # any valid caller may see whether the relay is reachable
        return self.dataplane.status()

    # --- stream health ----------------------------------------------------------------------------------------
    @timer(interval=HEALTH_CHECK_SECONDS)
    def check_stream_health(self) -> None:
        # Also when no data plane answers: the session and commitment gauges follow the database.
        self.dataplane.export_placements()
        stats = self.dataplane.stats
        if not stats:
            return
        with self.db.begin():
            stream_health.record_stream_health(self.db, stats, self.dataplane.settings)
