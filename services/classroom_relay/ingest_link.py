"""The control plane's link to the ingest processes (one beside each data plane that has one): after every push of a
data plane's state, the same green thread pushes that data plane's ingest state (ingest_state.py). A failure is
logged and counted, never raised into the data plane's channel; the next reconcile pushes again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.classroom_relay import ingest_settings, ingest_state
from services.classroom_relay.dataplane.protocol import ControlClient
from services.classroom_relay.relay_settings import RelaySettings

log = logging.getLogger(__name__)


def parse_named(text: str | None, what: str) -> dict[str, str]:
    """`name=value,name=value` → {name: value}; ValueError naming `what` for anything else."""
    found: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, separator, value = item.strip().partition("=")
        if not separator or not name or not value:
            raise ValueError(f"{what}: expected name=value, got {item!r}")
        found[name] = value
    return found


class IngestLink:
    def __init__(self, addresses: dict[str, str], secret: Callable[[], str | None], engine: Engine | None = None,
                 settings: RelaySettings | None = None, rtmp_urls: dict[str, str] | None = None,
                 rtsp_sources_file: str | None = None) -> None:
        self.addresses = addresses  # data plane name → host:port of its ingest process
        self.secret = secret
        self.engine, self.settings = engine, settings
        self.clients: dict[str, ControlClient] = {}
        self.rtmp_urls: dict[str, str] = dict(rtmp_urls or {})  # data plane → what recording hosts publish to
        self.rtsp_sources_file = rtsp_sources_file
        self.failures = 0

    @classmethod
    def from_config(cls, config: dict, engine: Engine, settings: RelaySettings,
                    secret: Callable[[], str | None]) -> IngestLink:
        return cls(parse_named(ingest_settings.INGESTS.get(config), "RELAY_INGESTS"), secret, engine, settings,
                   parse_named(ingest_settings.RTMP_PUBLIC_URLS.get(config), "RELAY_RTMP_PUBLIC_URLS"),
                   ingest_settings.RTSP_SOURCES_FILE.get(config))

    def push_for(self, dataplane: str, media_address: list | None) -> None:
        """Push the ingest state of `dataplane`'s live sessions to its ingest process (if it has one): called right
        after the data plane's own push, so a session's start and end reach both."""
        if dataplane not in self.addresses or self.engine is None or self.settings is None:
            return
        with Session(self.engine) as db:
            state = ingest_state.desired_ingests(db, self.settings, dataplane, media_address,
                                                 ingest_state.load_rtsp_sources(self.rtsp_sources_file))
        self.push(dataplane, state)

    def wanted(self, dataplane: str) -> bool:
        return dataplane in self.addresses

    def push(self, dataplane: str, state: dict[str, Any]) -> dict[str, Any] | None:
        address = self.addresses.get(dataplane)
        if address is None:
            return None
        try:
            client = self.clients.get(dataplane)
            if client is None:
                host, _, port = address.rpartition(":")
                client = self.clients[dataplane] = ControlClient(host, int(port), timeout=5.0, secret=self.secret())
                hello = client.call("hello")
                if hello.get("rtmp_url") and dataplane not in self.rtmp_urls:
                    self.rtmp_urls[dataplane] = hello["rtmp_url"]
            reply = client.call("set_state", **state)
        except (OSError, ValueError, PermissionError) as error:
            self.failures += 1
            self.close(dataplane)
            log.warning("ingest beside data plane %s (%s): %s", dataplane, address, error)
            return None
        if not reply.get("ok"):
            self.failures += 1
            log.warning("ingest beside data plane %s refused its state: %s", dataplane, reply.get("message"))
        return reply

    def close(self, dataplane: str | None = None) -> None:
        for name in [dataplane] if dataplane else list(self.clients):
            client = self.clients.pop(name, None) if name else None
            if client is not None:
                client.close()
