"""The control plane's connections to the processes beside a data plane (the ingest, the recorder): one
authenticated ControlClient per data plane, opened with `hello` (kept: what the process advertises) and
dropped on any failure, which is logged and counted, never raised into the data plane's channel; the next
push connects again. Both speak the data plane's wire format (dataplane/protocol.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from services.classroom_relay.dataplane.protocol import ControlClient

log = logging.getLogger(__name__)
TIMEOUT_SECONDS = 5.0
# After a failure, calls wait this long (doubling up to the maximum) before trying again: a process that is
# away (or a name that does not resolve) must not hold up every push of the data plane's channel.
RETRY_SECONDS, MAX_RETRY_SECONDS = 1.0, 30.0


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


class SidecarClients:
    def __init__(self, addresses: dict[str, str], secret: Callable[[], str | None], what: str) -> None:
        self.addresses = addresses  # data plane name → host:port of the process beside it
        self.secret = secret
        self.what = what  # for log lines: "ingest", "recorder"
        self.clients: dict[str, ControlClient] = {}
        self.hellos: dict[str, dict[str, Any]] = {}  # what each answered to `hello` on the current connection
        self.failures = 0
        self.backoff: dict[str, tuple[float, float]] = {}  # data plane → (retry at, current wait)

    def wanted(self, dataplane: str) -> bool:
        return dataplane in self.addresses

    def hello(self, dataplane: str) -> dict[str, Any] | None:
        """The process's `hello`, connecting first if needed; None when it is not configured or away."""
        if dataplane not in self.addresses:
            return None
        if dataplane not in self.clients and self.call(dataplane, "hello") is None:
            return None
        return self.hellos.get(dataplane)

    def call(self, dataplane: str, op: str, **fields: Any) -> dict[str, Any] | None:
        """One request; None when the process is not configured or did not answer (logged, counted). A reply
        with `ok: false` is returned (and counted) for the caller to read."""
        address = self.addresses.get(dataplane)
        if address is None or time.monotonic() < self.backoff.get(dataplane, (0.0, 0.0))[0]:
            return None
        try:
            client = self.clients.get(dataplane)
            if client is None:
                host, _, port = address.rpartition(":")
                client = self.clients[dataplane] = ControlClient(host, int(port), timeout=TIMEOUT_SECONDS,
                                                                 secret=self.secret())
                self.hellos[dataplane] = client.call("hello")
                if op == "hello":
                    return self.hellos[dataplane]
            reply = client.call(op, **fields)
        except (OSError, ValueError, PermissionError) as error:
            self.failures += 1
            self.close(dataplane)
            wait = min(MAX_RETRY_SECONDS, self.backoff.get(dataplane, (0.0, RETRY_SECONDS / 2))[1] * 2)
            self.backoff[dataplane] = (time.monotonic() + wait, wait)
            log.warning("%s beside data plane %s (%s): %s: %s; trying again in %.0f s", self.what, dataplane,
                        address, op, error, wait)
            return None
        self.backoff.pop(dataplane, None)
        if not reply.get("ok"):
            self.failures += 1
            log.warning("%s beside data plane %s refused %s: %s", self.what, dataplane, op, reply.get("message"))
        return reply

    def close(self, dataplane: str | None = None) -> None:
        for name in [dataplane] if dataplane else list(self.clients):
            self.hellos.pop(name, None)
            client = self.clients.pop(name, None) if name else None
            if client is not None:
                client.close()
