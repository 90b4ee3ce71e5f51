"""The control plane's link to the ingest processes (one beside each data plane that has one): after every push of a
data plane's state, the same green thread pushes that data plane's ingest state (ingest_state.py). A failure is
logged and counted, never raised into the data plane's channel (sidecar_link.py); the next reconcile pushes again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.classroom_relay import ingest_settings, ingest_state
from services.classroom_relay.relay_settings import RelaySettings
from services.classroom_relay.sidecar_link import SidecarClients, parse_named

__all__ = ["IngestLink", "parse_named"]


class IngestLink:
    def __init__(self, addresses: dict[str, str], secret: Callable[[], str | None], engine: Engine | None = None,
                 settings: RelaySettings | None = None, rtmp_urls: dict[str, str] | None = None,
                 rtsp_sources_file: str | None = None) -> None:
        self.sidecars = SidecarClients(addresses, secret, "ingest")  # data plane name → its ingest process
        self.engine, self.settings = engine, settings
        self.rtmp_urls: dict[str, str] = dict(rtmp_urls or {})  # data plane → what recording hosts publish to
        self.rtsp_sources_file = rtsp_sources_file

    @property
    def failures(self) -> int:
        return self.sidecars.failures

    @classmethod
    def from_config(cls, config: dict, engine: Engine, settings: RelaySettings,
                    secret: Callable[[], str | None]) -> IngestLink:
        return cls(parse_named(ingest_settings.INGESTS.get(config), "RELAY_INGESTS"), secret, engine, settings,
                   parse_named(ingest_settings.RTMP_PUBLIC_URLS.get(config), "RELAY_RTMP_PUBLIC_URLS"),
                   ingest_settings.RTSP_SOURCES_FILE.get(config))

    def push_for(self, dataplane: str, media_address: list | None) -> None:
        """Push the ingest state of `dataplane`'s live sessions to its ingest process (if it has one): called right
        after the data plane's own push, so a session's start and end reach both."""
        if not self.wanted(dataplane) or self.engine is None or self.settings is None:
            return
        with Session(self.engine) as db:
            state = ingest_state.desired_ingests(db, self.settings, dataplane, media_address,
                                                 ingest_state.load_rtsp_sources(self.rtsp_sources_file))
        self.push(dataplane, state)

    def wanted(self, dataplane: str) -> bool:
        return self.sidecars.wanted(dataplane)

    def push(self, dataplane: str, state: dict[str, Any]) -> dict[str, Any] | None:
        reply = self.sidecars.call(dataplane, "set_state", **state)
        hello = self.sidecars.hellos.get(dataplane) or {}
        if hello.get("rtmp_url") and dataplane not in self.rtmp_urls:
            self.rtmp_urls[dataplane] = hello["rtmp_url"]
        return reply

    def close(self, dataplane: str | None = None) -> None:
        self.sidecars.close(dataplane)
