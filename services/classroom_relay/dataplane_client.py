"""The control plane's side of the data planes' control channels, as a nameko DependencyProvider.

Each configured data plane (placement.py: RELAY_DATAPLANES, or the single RELAY_CONTROL_ADDRESS)
gets one managed (green) thread that keeps one connection to it (a separate OS process, possibly in
another pod; see dataplane/control.py) and makes its state match the database: it pushes the live
sessions placed on that data plane with the idempotent `set_state` after every change the service
commits, whenever `hello` or `get_stats` shows a new data-plane instance (it restarted and forgot
everything), and after reconnecting. It pulls `get_stats` every few seconds for the stream-health
timer and the SDPs. Errors back off and retry; the service keeps answering RPCs while a data plane is
away, and placement skips data planes that do not answer.

The control channel is always authenticated: RELAY_CONTROL_SECRET, else the secret the data plane wrote
to RELAY_CONTROL_SECRET_FILE (mode 0600; read again on every connection, so the control plane may start
first). Besides every change, the whole desired state is pushed every RELAY_RECONCILE_INTERVAL seconds, so
whatever reached a data plane some other way (a removed session, a stranger's branch) is put right.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import eventlet
from eventlet.queue import Empty, LightQueue
from nameko.extensions import DependencyProvider
from prometheus_client import Counter, Gauge
from sqlalchemy.orm import Session

from services.classroom_relay import (
    dataplane_state,
    lessons,
    link_budgets,
    placement,
    recordings,
    relay_settings,
    settings,
)
from services.classroom_relay.dataplane.protocol import ControlClient
from services.classroom_relay.ingest_link import IngestLink
from services.classroom_relay.recorder_link import RecorderLink
from services.common.config import database_url
from services.common.db import make_engine
from services.common.link_targets import LINK_TARGETS_BYTES_PER_SECOND
from services.common.metrics import registry_for

log = logging.getLogger(__name__)

class DataPlaneError(Exception):
    """The data plane answered a request with `ok: false`."""


class DataPlaneChannel:
    """One data plane: its connection, what it told us last, and the thread that keeps it in step."""

    min_backoff_seconds = 0.2
    max_backoff_seconds = 5.0

    def __init__(self, spec: placement.DataPlaneSpec, link: DataPlaneLink) -> None:
        self.spec = spec
        self.link = link
        self.wakeups: LightQueue = LightQueue()
        self.push_wanted = True
        self.pushed_instance: str | None = None
        self.hello: dict[str, Any] = {}
        self.stats: dict[str, Any] | None = None
        self.stats_at: float | None = None
        self.confirmed_outputs: list[dict[str, Any]] = []  # from the last set_state reply
        self.next_reconcile = 0.0
        self.client: ControlClient | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def reachable(self) -> bool:
        """Answered `hello` on the current connection (a failed exchange clears it)."""
        return bool(self.hello)

    def request_push(self) -> None:
        self.push_wanted = True
        self.wakeups.put(None)

    def close(self) -> None:
        """Wake the channel's thread (called from another green thread once ``link.running`` is False);
        the thread closes its connection itself on the way out."""
        self.wakeups.put(None)
        if self.client is not None:
            self.client.interrupt()

    def media_address(self) -> list[Any] | None:
        return placement.public_address(self.hello.get("media_address"), self.spec)

    def outputs(self) -> dict[dataplane_state.OutputKey, dict]:
        """Outputs by (session, receiver, source classroom, track), relay addresses as classrooms reach them."""
        found = dataplane_state.outputs_by_key(self.stats, self.confirmed_outputs)
        return {key: {**output, "relay_address": placement.public_address(output.get("relay_address"), self.spec)}
                for key, output in found.items()}

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "connected": self.reachable and self.pushed_instance == self.hello.get("instance"),
            "instance": self.hello.get("instance"),
            "media_address": self.media_address(),
            "rtcp_address": placement.public_address(self.hello.get("rtcp_address"), self.spec),
            "stats_age_seconds": None if self.stats_at is None else round(time.monotonic() - self.stats_at, 3),
        }

    # --- the thread ---------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._keep_in_step()
        finally:
            if self.client is not None:
                self.client.close()

    def _keep_in_step(self) -> None:
        backoff = 0.0
        while self.link.running:
            try:
                self._converse()
                backoff = 0.0
            except (OSError, ValueError, DataPlaneError) as error:  # away or restarting: retry later
                if not self.link.running:
                    return
                self.link.errors_total.labels(self.name).inc()
                self.link.connected_gauge.labels(self.name).set(0)
                self.hello = {}
                log.warning("data plane %s control channel: %s; retrying in %.1fs", self.name, error, backoff)
                if self.client is not None:
                    self.client.close()
                backoff = min(self.max_backoff_seconds, max(self.min_backoff_seconds, backoff * 2))
                eventlet.sleep(backoff)
            except Exception:  # a bug must not kill the thread (and with it the container)
                log.exception("data plane %s link failed", self.name)
                self.hello = {}
                eventlet.sleep(self.max_backoff_seconds)

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.client is not None
        reply = self.client.call(op, **fields)
        if not reply.get("ok"):
            raise DataPlaneError(f"{op}: {reply.get('error')}: {reply.get('message')}")
        return reply

    def _converse(self) -> None:
        """One connection's life: hello, push, then stats and pushes until something fails."""
        self.client = ControlClient(timeout=5.0, secret=self.link.control_secret(), **self.spec.client_arguments())
        self.hello = self._call("hello")
        self.link.connected_gauge.labels(self.name).set(1)
        next_stats = 0.0
        while self.link.running:
            if (self.push_wanted or self.pushed_instance != self.hello.get("instance")
                    or time.monotonic() >= self.next_reconcile):
                self._push()
            if time.monotonic() >= next_stats:
                stats = self._call("get_stats")["stats"]
                self.stats, self.stats_at = stats, time.monotonic()
                self.link.recorders.poll(self.name)  # recordings' progress; finished ones become available
                next_stats = self.stats_at + self.link.stats_interval
                if stats.get("instance") != self.pushed_instance:
                    # ControlClient reconnects by itself: a restarted data plane shows up here first.
                    self.hello = self._call("hello")
                    continue
            self._wait(max(0.0, min(next_stats, self.next_reconcile) - time.monotonic()))

    def _push(self) -> None:
        # Clear the flag before reading: a change committed meanwhile asks for another push.
        self.push_wanted = False
        self.link.recorders.prepare(self.name)  # recordings start and end with the sessions (recorder member)
        with Session(self.link.engine) as db:
            state = dataplane_state.desired_state(db, self.link.settings, dataplane=self.name)
        instance = self.hello.get("instance")
        reply = self._call("set_state", **state)
        for refused in reply.get("refused_senders", []) + reply.get("refused_outputs", []):
            log.warning("data plane %s refused: %s", self.name, refused)
        self.confirmed_outputs = list(reply.get("outputs") or [])
        self.link.ingest.push_for(self.name, self.hello.get("media_address"))  # classroom equipment in (RTMP/RTSP)
        self.link.recorders.push_for(self.name, self.hello.get("media_address"),
                                     dataplane_state.outputs_by_key(None, self.confirmed_outputs))
        self.pushed_instance = instance
        self.next_reconcile = time.monotonic() + self.link.reconcile_interval
        self.link.pushes_total.labels(self.name).inc()
        self.link.export_placements()

    def _wait(self, seconds: float) -> None:
        with contextlib.suppress(Empty):
            self.wakeups.get(timeout=seconds)
        while self.wakeups.qsize():
            self.wakeups.get_nowait()


class DataPlaneLink(DependencyProvider):
    """Keeps every data plane's state equal to the database; injects itself (see the public methods)."""

    def __init__(self, service: str = "classroom_relay") -> None:
        self.service = service
        self.running = False
        self.channels: dict[str, DataPlaneChannel] = {}

    # --- nameko lifecycle -----------------------------------------------------------------------------
    def setup(self) -> None:
        config = self.container.config
        self.settings = relay_settings.settings_from(config)
        self.specs = placement.dataplanes_from(config)
        self.secret = settings.CONTROL_SECRET.get(config)
        self.secret_file = Path(settings.CONTROL_SECRET_FILE.get(config))
        self.stats_interval = settings.STATS_INTERVAL.get(config)
        self.reconcile_interval = settings.RECONCILE_INTERVAL.get(config)
        self.engine = make_engine(database_url(self.service, config))
        self.channels = {spec.name: DataPlaneChannel(spec, self) for spec in self.specs}
        self.ingest = IngestLink.from_config(config, self.engine, self.settings, self.control_secret)  # RTMP/RTSP in
        self.recorders = RecorderLink.from_config(config, self.engine, self.control_secret)  # recordings out
        self._setup_metrics()

    def _setup_metrics(self) -> None:
        registry = registry_for(self.container)
        self.connected_gauge = Gauge(
            "lianxiao_relay_dataplane_connected", "1 while the control channel to a data plane works",
            ["dataplane"], registry=registry,
        )
        self.pushes_total = Counter(
            "lianxiao_relay_state_pushes_total", "Desired states pushed to a data plane (set_state)",
            ["dataplane"], registry=registry,
        )
        self.errors_total = Counter(
            "lianxiao_relay_control_errors_total", "Failed exchanges with a data plane", ["dataplane"],
            registry=registry,
        )
        for name in self.channels:
            self.connected_gauge.labels(name).set(0)
        self.committed_gauge = Gauge(
            "lianxiao_relay_committed_bytes_per_second", "Bandwidth committed by admission control, per link",
            ["link", "owner_id"], registry=registry,
        )
        self.school_committed_gauge = Gauge(
            "lianxiao_relay_school_link_committed_bytes_per_second",
            "Bandwidth committed on a school's internet link by the live sessions (admission control's view)",
            ["school"], registry=registry,
        )
        self.session_info = Gauge(
            "lianxiao_relay_session_info",
            "1 per live session: its data plane, master classroom and master school (join it with the data "
            "plane's per-session metrics on `session`)",
            ["session", "dataplane", "master_classroom", "master_school"], registry=registry,
        )
        self.recordings_gauge = Gauge(
            "lianxiao_relay_recordings",
            "Recordings not final yet, by the data plane whose recorder has them and state (recording: running; "
            "ending: the recorder finalizes it)", ["dataplane", "state"], registry=registry,
        )
        targets = Gauge(
            "lianxiao_relay_link_target_bytes_per_second", "Bandwidth targets from the source documents",
            ["link"], registry=registry,
        )
        for link, value in LINK_TARGETS_BYTES_PER_SECOND.items():
            targets.labels(link).set(value)

    def control_secret(self) -> str | None:
        """RELAY_CONTROL_SECRET, else the data plane's secret file (None while it does not exist yet: the
        data plane then refuses the connection, and the channel retries)."""
        if self.secret:
            return self.secret
        try:
            return self.secret_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def start(self) -> None:
        self.running = True
        for name, channel in self.channels.items():
            self.container.spawn_managed_thread(channel.run, identifier=f"relay_dataplane_link:{name}")

    def stop(self) -> None:
        self.running = False
        for channel in self.channels.values():
            channel.close()
        self.ingest.close()
        self.recorders.close()
        self.engine.dispose()

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> DataPlaneLink:
        return self

    # --- what entrypoints use ---------------------------------------------------------------------------
    def request_push(self) -> None:
        """Call after committing a change: every data plane's thread re-reads the database and pushes.

        (A data plane whose sessions did not change receives the same state again: set_state is cheap
        and idempotent, and a placement that just moved a session away needs it removed there.)
        """
        for channel in self.channels.values():
            channel.request_push()

    def fleet(self) -> placement.Fleet:
        """The configured data planes and the ones answering now, for placing a starting session."""
        reachable = frozenset(name for name, channel in self.channels.items() if channel.reachable)
        return placement.Fleet(tuple(self.specs), reachable)

    def media_addresses(self) -> dict[str, list]:
        """Data plane name → the [host, port] classrooms send media to (for join tokens)."""
        found = {name: channel.media_address() for name, channel in self.channels.items()}
        return {name: address for name, address in found.items() if address is not None}

    def outputs_by_dataplane(self) -> dict[str, dict[dataplane_state.OutputKey, dict]]:
        return {name: channel.outputs() for name, channel in self.channels.items()}

    @property
    def stats(self) -> dict[str, Any] | None:
        """Every data plane's latest sessions in one `get_stats`-shaped dict (placement keeps them apart)."""
        found = [channel.stats for channel in self.channels.values() if channel.stats is not None]
        if not found:
            return None
        merged: dict[str, Any] = {}
        for stats in found:
            merged.update(stats.get("sessions") or {})
        return {"sessions": merged}

    def status(self) -> dict[str, Any]:
        dataplanes = [channel.status() for channel in self.channels.values()]
        return {"connected": all(entry["connected"] for entry in dataplanes), "dataplanes": dataplanes}

    def export_placements(self) -> None:
        """Refresh the gauges that describe live sessions and commitments from the database."""
        with Session(self.engine) as db:
            labels = dataplane_state.live_session_labels(db)
            loads = lessons.committed_loads(db)
            unfinished = recordings.unfinished_counts(db)
        self._export(labels, loads, unfinished)

    def _export(self, labels: list[dict[str, str]], loads: list[link_budgets.Load],
                unfinished: dict[tuple[str, str], int] | None = None) -> None:
        # Reset then set in one go without yielding (no I/O in between), so a scrape never sees a gap.
        self.recordings_gauge.clear()
        for (dataplane, state), count in (unfinished or {}).items():
            self.recordings_gauge.labels(dataplane, state).set(count)
        self.session_info.clear()
        for entry in labels:
            self.session_info.labels(**entry).set(1)
        self.committed_gauge.clear()
        self.school_committed_gauge.clear()
        for link, bps in link_budgets.total_by_link(loads).items():
            self.committed_gauge.labels(link.kind, str(link.owner_id)).set(bps / 8)
            if link.kind == "school_link":
                self.school_committed_gauge.labels(str(link.owner_id)).set(bps / 8)
