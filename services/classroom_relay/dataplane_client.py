"""The control plane's side of the data plane's control channel, as a nameko DependencyProvider.

A managed (green) thread keeps one connection to the data plane (a separate OS process; see
dataplane/control.py) and makes its state match the database: it pushes the whole desired state with
the idempotent `set_state` after every change the service commits, whenever `hello` or `get_stats`
shows a new data-plane instance (it restarted and forgot everything), and after reconnecting. It pulls
`get_stats` every few seconds for the stream-health timer and the SDP. Errors back off and retry; the
service keeps answering RPCs while the data plane is away.

Where the data plane is: RELAY_CONTROL_ADDRESS (nameko config or environment), `host:port` (default
127.0.0.1:7070, the data plane's default) or `unix:/path/to/socket`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import eventlet
from eventlet.queue import Empty, LightQueue
from nameko.extensions import DependencyProvider
from prometheus_client import Counter, Gauge
from sqlalchemy.orm import Session

from services.classroom_relay import admission, sessions
from services.classroom_relay.dataplane.control import ControlClient
from services.common.config import database_url
from services.common.db import make_engine
from services.common.metrics import registry_for

log = logging.getLogger(__name__)

DEFAULT_CONTROL_ADDRESS = "127.0.0.1:7070"
# The link targets of the source document, exported so dashboards and alerts compare against them.
LINK_TARGETS_BYTES_PER_SECOND = {
    "master_school_link": 100_000_000 / 8,
    "broadcasting_uplink": 25_000_000 / 8,
    "receiving_downlink": 10_000_000 / 8,
}


class DataPlaneError(Exception):
    """The data plane answered a request with `ok: false`."""


def parse_control_address(text: str) -> dict[str, Any]:
    """`host:port` or `unix:/path` → ControlClient keyword arguments."""
    if text.startswith("unix:"):
        return {"unix_path": text[len("unix:") :]}
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"RELAY_CONTROL_ADDRESS must be host:port or unix:/path, not {text!r}")
    return {"host": host, "port": int(port)}


class DataPlaneLink(DependencyProvider):
    """Keeps the data plane's state equal to the database; injects itself (see the public methods)."""

    min_backoff_seconds = 0.2
    max_backoff_seconds = 5.0

    def __init__(self, service: str = "classroom_relay") -> None:
        self.service = service
        self.wakeups: LightQueue = LightQueue()
        self.running = False
        self.push_wanted = True
        self.pushed_instance: str | None = None
        self.hello: dict[str, Any] = {}
        self.stats: dict[str, Any] | None = None
        self.stats_at: float | None = None
        self.last_push_at: float | None = None
        self.client: ControlClient | None = None

    # --- nameko lifecycle -----------------------------------------------------------------------------
    def setup(self) -> None:
        config = self.container.config
        self.settings = sessions.settings_from(config)
        address = config.get("RELAY_CONTROL_ADDRESS") or os.environ.get("RELAY_CONTROL_ADDRESS")
        self.client_arguments = parse_control_address(address or DEFAULT_CONTROL_ADDRESS)
        self.stats_interval = float(
            config.get("RELAY_STATS_INTERVAL") or os.environ.get("RELAY_STATS_INTERVAL") or 2.0
        )
        self.engine = make_engine(database_url(self.service, config))
        registry = registry_for(self.container)
        self.connected_gauge = Gauge(
            "lianxiao_relay_dataplane_connected", "1 while the control channel to the data plane works",
            registry=registry,
        )
        self.pushes_total = Counter(
            "lianxiao_relay_state_pushes_total", "Desired states pushed to the data plane (set_state)",
            registry=registry,
        )
        self.errors_total = Counter(
            "lianxiao_relay_control_errors_total", "Failed exchanges with the data plane", registry=registry
        )
        self.committed_gauge = Gauge(
            "lianxiao_relay_committed_bytes_per_second", "Bandwidth committed by admission control, per link",
            ["link", "owner_id"], registry=registry,
        )
        targets = Gauge(
            "lianxiao_relay_link_target_bytes_per_second", "Bandwidth targets from the source documents",
            ["link"], registry=registry,
        )
        for link, value in LINK_TARGETS_BYTES_PER_SECOND.items():
            targets.labels(link).set(value)

    def start(self) -> None:
        self.running = True
        self.container.spawn_managed_thread(self._run, identifier="relay_dataplane_link")

    def stop(self) -> None:
        self.running = False
        self.wakeups.put(None)
        if self.client is not None:
            self.client.close()
        self.engine.dispose()

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> DataPlaneLink:
        return self

    # --- what entrypoints use ---------------------------------------------------------------------------
    def request_push(self) -> None:
        """Call after committing a change: the thread re-reads the database and pushes it."""
        self.push_wanted = True
        self.wakeups.put(None)

    def outputs(self) -> dict[tuple[str, str], dict]:
        return sessions.outputs_by_key(self.stats)

    def media_address(self) -> list | None:
        return self.hello.get("media_address")

    def status(self) -> dict[str, Any]:
        return {
            "connected": bool(self.hello) and self.pushed_instance == self.hello.get("instance"),
            "instance": self.hello.get("instance"),
            "media_address": self.hello.get("media_address"),
            "rtcp_address": self.hello.get("rtcp_address"),
            "stats_age_seconds": None if self.stats_at is None else round(time.monotonic() - self.stats_at, 3),
        }

    # --- the thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        while self.running:
            try:
                self._converse()
                backoff = 0.0
            except (OSError, ValueError, DataPlaneError) as error:  # away or restarting: retry later
                if not self.running:
                    return
                self.errors_total.inc()
                self.connected_gauge.set(0)
                self.hello = {}
                log.warning("data plane control channel: %s; retrying in %.1fs", error, backoff)
                if self.client is not None:
                    self.client.close()
                backoff = min(self.max_backoff_seconds, max(self.min_backoff_seconds, backoff * 2))
                eventlet.sleep(backoff)
            except Exception:  # a bug must not kill the thread (and with it the container)
                log.exception("data plane link failed")
                eventlet.sleep(self.max_backoff_seconds)

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.client is not None
        reply = self.client.call(op, **fields)
        if not reply.get("ok"):
            raise DataPlaneError(f"{op}: {reply.get('error')}: {reply.get('message')}")
        return reply

    def _converse(self) -> None:
        """One connection's life: hello, push, then stats and pushes until something fails."""
        self.client = ControlClient(timeout=5.0, **self.client_arguments)
        self.hello = self._call("hello")
        self.connected_gauge.set(1)
        next_stats = 0.0
        while self.running:
            if self.push_wanted or self.pushed_instance != self.hello.get("instance"):
                self._push()
            if time.monotonic() >= next_stats:
                stats = self._call("get_stats")["stats"]
                self.stats, self.stats_at = stats, time.monotonic()
                next_stats = self.stats_at + self.stats_interval
                if stats.get("instance") != self.pushed_instance:
                    # ControlClient reconnects by itself: a restarted data plane shows up here first.
                    self.hello = self._call("hello")
                    continue
            self._wait(max(0.0, next_stats - time.monotonic()))

    def _push(self) -> None:
        # Clear the flag before reading: a change committed meanwhile asks for another push.
        self.push_wanted = False
        with Session(self.engine) as db:
            state = sessions.desired_state(db, self.settings)
            loads = sessions.committed_loads(db)
        instance = self.hello.get("instance")
        reply = self._call("set_state", **state)
        for refused in reply.get("refused_senders", []):
            log.warning("data plane refused a registered sender: %s", refused)
        self.pushed_instance = instance
        self.last_push_at = time.monotonic()
        self.pushes_total.inc()
        self._export_commitments(loads)

    def _export_commitments(self, loads: list[admission.Load]) -> None:
        self.committed_gauge.clear()
        for link, bps in admission.total_by_link(loads).items():
            self.committed_gauge.labels(link.kind, str(link.owner_id)).set(bps / 8)

    def _wait(self, seconds: float) -> None:
        with contextlib.suppress(Empty):
            self.wakeups.get(timeout=seconds)
        while self.wakeups.qsize():
            self.wakeups.get_nowait()
