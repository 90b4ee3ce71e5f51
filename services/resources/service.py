"""The resources service (资源库): recorded lessons, clips, playback, patrol, watches, retention.

Entrypoints only; the logic lives in catalog.py (events in), library.py (search, metadata, clips),
access.py (scope and alliance sharing), playback.py (signed URLs, the patrol list), watches.py (watch
counting), retention.py and publishing.py (`resource.published`). Every RPC takes the caller's scope first.
"""

from __future__ import annotations

import logging
from typing import Any

import eventlet
from nameko.dependency_providers import Config
from nameko.rpc import RpcProxy
from nameko.timer import timer

from services.common.config import RECORDINGS_ROOT
from services.common.db import Database
from services.common.entrypoints import rpc
from services.common.errors import LianxiaoError, ServiceUnavailable
from services.common.events import OutboxRelay
from services.common.health import HealthRpc
from services.common.metrics import ServiceMetrics
from services.common.replay import ReplayRpc
from services.common.scope import Scope
from services.common.storage import FilesystemStorage
from services.common.subscriber import ReceivedEvent, cloud_event_handler
from services.resources import catalog, library, playback, retention, settings, watches
from services.resources.models import outbox, processed_events

EVENT_BATCH = 50
SILENCE_CHECK_SECONDS = 5  # how often silent watches are ended and pending observations recorded
ACTIVITIES_TIMEOUT_SECONDS = 2.0  # well inside the gateway's RPC timeout (`end_watch` waits for it)
log = logging.getLogger(__name__)


class ResourcesService(HealthRpc, ReplayRpc):
    name = "resources"

    db = Database("resources")
    metrics = ServiceMetrics("resources")
    events = OutboxRelay(outbox)
    config = Config()
    activities = RpcProxy("activities")  # lesson observations, always bounded (see _record_observations)

    def _rules(self) -> watches.Rules:
        return watches.Rules(settings.WATCH_HEARTBEAT_SECONDS.get(self.config),
                             settings.OBSERVATION_MIN_SECONDS.get(self.config))

    def _signer(self) -> playback.Signer | None:
        return playback.Signer.from_config(self.config)

    def _retention_days(self) -> int:
        return settings.RETENTION_DAYS.get(self.config)

    # --- the library ------------------------------------------------------------------------------------
    @rpc
    def search_resources(self, scope: dict, params: dict | None = None) -> dict[str, Any]:
        with self.db.begin():
            return library.search(self.db, Scope.from_dict(scope), params or {})

    @rpc
    def get_resource(self, scope: dict, resource_id: int) -> dict[str, Any]:
        with self.db.begin():
            return library.get_resource(self.db, Scope.from_dict(scope), resource_id)

    @rpc
    def update_resource(self, scope: dict, resource_id: int, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return library.update_resource(self.db, Scope.from_dict(scope), resource_id, data)

    @rpc
    def add_clip(self, scope: dict, resource_id: int, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return library.add_clip(self.db, Scope.from_dict(scope), resource_id, data)

    @rpc
    def delete_clip(self, scope: dict, resource_id: int, clip_id: int) -> None:
        with self.db.begin():
            library.delete_clip(self.db, Scope.from_dict(scope), resource_id, clip_id)

    @rpc
    def playback(self, scope: dict, resource_id: int) -> dict[str, Any]:
        with self.db.begin():
            return playback.resource_playback(self.db, Scope.from_dict(scope), resource_id, self._signer())

    @rpc
    def patrol_sessions(self, scope: dict) -> dict[str, Any]:
        with self.db.begin():
            return playback.patrol_sessions(self.db, Scope.from_dict(scope), self._signer())

    # --- retention --------------------------------------------------------------------------------------
    @rpc
    def get_retention(self, scope: dict) -> dict[str, Any]:
        with self.db.begin():
            return retention.get_retention(self.db, Scope.from_dict(scope), self._retention_days())

    @rpc
    def set_retention(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return retention.set_retention(self.db, Scope.from_dict(scope), data, self._retention_days())

    @timer(interval=settings.RETENTION_CHECK_SECONDS.get())
    def apply_retention(self) -> None:
        storage = FilesystemStorage(RECORDINGS_ROOT.get(self.config))
        while True:  # batch after batch, each its own transaction
            with self.db.begin():
                if not retention.delete_expired(self.db, storage.delete, self._retention_days()):
                    return

    # --- watches ----------------------------------------------------------------------------------------
    @rpc
    def start_watch(self, scope: dict, data: dict) -> dict[str, Any]:
        with self.db.begin():
            return watches.start(self.db, Scope.from_dict(scope), data, self._rules())

    @rpc
    def heartbeat(self, scope: dict, watch_id: str, data: dict) -> None:
        with self.db.begin():
            watches.heartbeat(self.db, Scope.from_dict(scope), watch_id, data, self._rules())

    @rpc
    def end_watch(self, scope: dict, watch_id: str) -> None:
        with self.db.begin():
            watches.end(self.db, Scope.from_dict(scope), watch_id, self._rules())
        self._record_observations(watch_id)  # this one only: the timer takes care of any backlog

    @rpc
    def list_watches(self, scope: dict, params: dict | None = None) -> dict[str, Any]:
        with self.db.begin():
            return watches.list_watches(self.db, Scope.from_dict(scope), params or {})

    @timer(interval=SILENCE_CHECK_SECONDS)
    def check_watches(self) -> None:
        with self.db.begin():
            watches.end_silent(self.db, self._rules())
        self._record_observations()

    def _record_observations(self, watch_id: str | None = None) -> None:
        """Pending observations (or `watch_id`'s) into the activity log, each call bounded; outside any
        transaction."""
        with self.db.begin():
            todo = watches.pending_observations(self.db, watch_id=watch_id)
        for item in todo:
            try:
                with eventlet.Timeout(ACTIVITIES_TIMEOUT_SECONDS):
                    answer = self.activities.record_activity(item.scope, item.activity)
            except eventlet.Timeout:
                continue  # stays pending: the timer tries again (the activity id makes it idempotent)
            except ServiceUnavailable:
                continue
            except LianxiaoError as error:  # refused for good: the teacher, the scope or the details
                with self.db.begin():
                    watches.settle(self.db, item.watch_id, "refused", f"{type(error).__name__}: {error}")
                continue
            except Exception:  # activities not running (UnknownService), a broken reply: try again later
                log.warning("could not record the observation of watch %s yet", item.watch_id, exc_info=True)
                continue
            with self.db.begin():
                watches.settle(self.db, item.watch_id, "recorded", answer.get("status"),
                               answer.get("activity", {}).get("id"))

    # --- events -----------------------------------------------------------------------------------------
    @cloud_event_handler("classroom_relay", catalog.RELAY_EVENTS, processed=processed_events, batch=EVENT_BATCH)
    def on_recording_event(self, events: list[ReceivedEvent]) -> None:
        catalog.apply_events(self.db, "classroom_relay", events)

    @cloud_event_handler("accounts", catalog.ACCOUNTS_EVENTS, processed=processed_events, batch=EVENT_BATCH)
    def on_accounts_event(self, events: list[ReceivedEvent]) -> None:
        catalog.apply_events(self.db, "accounts", events)
