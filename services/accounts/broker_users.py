"""Broker users for other bureaus' subscribers: each may read only its own bureaus' events.

Events are routed `bureau.<id>.<event type>` (services/common/events.py). A subscriber's RabbitMQ user
gets, on the platform's vhost:

- permissions (regexes on resource names): configure and write only its own queues `<user>.…`
  (declare, bind); read its own queues and the four event exchanges. Nothing else: no `nameko-rpc`
  (no RPC), no other exchange, no publishing anywhere (not even the default exchange).
- topic permissions on each event exchange: read only binding keys that start `bureau.<id>.` for
  its bureaus (RabbitMQ checks a queue binding's key against this regex), write nothing.

So the broker itself refuses a binding to another bureau's events, to `#` or to `bureau.*.…`.
Created through RabbitMQ's management API (the operator's credentials, RABBITMQ_MANAGEMENT_URL).
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote

import requests

from services.common.config import ManagementApi
from services.common.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from services.common.events import BUREAU_KEY_PREFIX

EVENT_EXCHANGES = ("activities.events", "accounts.events", "classroom_relay.events", "resources.events")
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{2,62}$")
TIMEOUT_SECONDS = 10.0


def permissions(user: str) -> dict[str, str]:
    """vhost permissions: own queues only, plus reading (binding from) the event exchanges."""
    own = rf"^{re.escape(user)}\..+$"
    exchanges = "|".join(re.escape(name) for name in EVENT_EXCHANGES)
    return {"configure": own, "write": own, "read": rf"^({re.escape(user)}\..+|{exchanges})$"}


def topic_read_pattern(bureau_ids: list[int]) -> str:
    ids = "|".join(str(int(bureau)) for bureau in sorted(set(bureau_ids)))
    return rf"^{BUREAU_KEY_PREFIX}\.({ids})\."


class BrokerAdmin:
    """The few management-API calls that provision a subscriber."""

    def __init__(self, amqp_uri: str, management_url: str | None = None) -> None:
        api = ManagementApi.of(amqp_uri, management_url)
        self.vhost, self.auth, self.base = api.vhost, api.auth, api.base_url

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        try:
            response = requests.request(method, f"{self.base}/api/{path}", json=body, auth=self.auth,
                                        timeout=TIMEOUT_SECONDS)
        except requests.RequestException as error:
            raise ServiceUnavailable(f"RabbitMQ's management API at {self.base} does not answer.") from error
        if response.status_code >= 400 and response.status_code != 404:
            raise ServiceUnavailable(f"RabbitMQ's management API refused {method} {path}: "
                                     f"{response.status_code} {response.text[:200]}")
        return response

    def user_exists(self, user: str) -> bool:
        return self._call("GET", f"users/{quote(user, safe='')}").status_code == 200

    def delete_subscriber(self, user: str) -> dict[str, Any]:
        """Remove the user (its permissions go with it; its queues stay until the operator deletes them)."""
        if not self.user_exists(user):
            raise NotFound(f"Broker user {user!r} does not exist.")
        self._call("DELETE", f"users/{quote(user, safe='')}")
        return {"user": user, "deleted": True}

    def create_subscriber(self, user: str, bureau_ids: list[int], *, replace: bool = False) -> dict[str, Any]:
        """Create (or, with `replace`, reset) the user; returns its settings and its password (shown once)."""
        if not USER_NAME.match(user):
            raise InvalidInput("A broker user name is 3–63 lower-case letters, digits, '-' or '_'.",
                               {"user": ["Invalid name."]})
        if not bureau_ids:
            raise InvalidInput("Name at least one bureau.", {"bureau": ["Required."]})
        if self.user_exists(user) and not replace:
            raise Conflict(f"Broker user {user!r} exists; use --replace to reset its password and permissions.")
        password = secrets.token_urlsafe(24)
        vhost, name = quote(self.vhost, safe=""), quote(user, safe="")
        for exchange in EVENT_EXCHANGES:  # as the services declare them, so the user can bind before any event
            self._call("PUT", f"exchanges/{vhost}/{quote(exchange, safe='')}",
                       {"type": "topic", "durable": True, "auto_delete": False, "internal": False, "arguments": {}})
        self._call("PUT", f"users/{name}", {"password": password, "tags": ""})
        self._call("PUT", f"permissions/{vhost}/{name}", permissions(user))
        self._call("DELETE", f"topic-permissions/{vhost}/{name}")
        pattern = topic_read_pattern(bureau_ids)
        for exchange in EVENT_EXCHANGES:
            self._call("PUT", f"topic-permissions/{vhost}/{name}", {"exchange": exchange, "read": pattern,
                                                                     "write": "^$"})
        return {
            "user": user, "password": password, "vhost": self.vhost, "bureau_ids": sorted(set(bureau_ids)),
            "queue_prefix": f"{user}.", "exchanges": list(EVENT_EXCHANGES),
            "binding_keys": [f"{BUREAU_KEY_PREFIX}.{bureau}.#" for bureau in sorted(set(bureau_ids))],
        }
