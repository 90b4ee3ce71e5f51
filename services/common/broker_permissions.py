"""RabbitMQ users for other bureaus: read the published event exchanges, nothing else (issue 12, item 9).

The services' vhost carries RPC requests (bearer tokens in `accounts.verify_token`) and accepts RPC
calls, so a subscriber must never hold the services' own credentials. This tool gives each subscribing
bureau its own user whose permissions (RabbitMQ's configure/write/read regular expressions) allow only:

- declaring, binding and consuming queues named `subscriber.<name>.<anything>` (its own);
- binding those queues to the event exchanges `accounts.events`, `activities.events`,
  `classroom_relay.events` (read on the exchange);
- nothing on `nameko-rpc`, the RPC queues, the default exchange or another subscriber's queues.

    python -m services.common.broker_permissions subscriber --name bureau-b --password "$(openssl rand -hex 16)"
    python -m services.common.broker_permissions remove --name bureau-b

It talks to the management API (`--management-url`, as an administrator: `--admin-user`,
`--admin-password`). deploy/README.md ("Other bureaus on the broker") describes the setup.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from urllib.parse import quote

import requests

EVENT_EXCHANGES = ("accounts.events", "activities.events", "classroom_relay.events")
SUBSCRIBER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
USER_PREFIX = "subscriber-"


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str

    def as_json(self) -> dict[str, str]:
        return {"configure": self.configure, "write": self.write, "read": self.read}


def subscriber_queue_prefix(name: str) -> str:
    return f"subscriber.{name}."


def subscriber_permissions(name: str) -> Permissions:
    if not SUBSCRIBER_NAME.match(name):
        raise ValueError("A subscriber name is 1-41 lower-case letters, digits or '-' (e.g. bureau-b).")
    own = "^" + re.escape(subscriber_queue_prefix(name)) + ".*"
    exchanges = "|".join(re.escape(exchange) for exchange in EVENT_EXCHANGES)
    return Permissions(configure=own, write=own, read=f"^(?:{exchanges})$|{own}")


class Management:
    def __init__(self, url: str, user: str, password: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.auth = (user, password)
        self.timeout = timeout

    def put(self, path: str, body: dict) -> None:
        response = requests.put(f"{self.url}/api/{path}", json=body, auth=self.auth, timeout=self.timeout)
        response.raise_for_status()

    def delete(self, path: str) -> None:
        response = requests.delete(f"{self.url}/api/{path}", auth=self.auth, timeout=self.timeout)
        if response.status_code != 404:
            response.raise_for_status()


def add_subscriber(management: Management, vhost: str, name: str, password: str) -> str:
    """Create (or update) the subscriber's user and its permissions on `vhost`; returns the user name."""
    permissions = subscriber_permissions(name)
    user = USER_PREFIX + name
    management.put(f"users/{quote(user, safe='')}", {"password": password, "tags": ""})
    management.put(f"permissions/{quote(vhost, safe='')}/{quote(user, safe='')}", permissions.as_json())
    return user


def remove_subscriber(management: Management, name: str) -> None:
    management.delete(f"users/{quote(USER_PREFIX + name, safe='')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Broker users for other bureaus (read event exchanges only).")
    parser.add_argument("--management-url", default="http://127.0.0.1:15672")
    parser.add_argument("--admin-user", default="guest")
    parser.add_argument("--admin-password", default="guest")
    parser.add_argument("--vhost", default="/", help="the services' vhost (default /)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("subscriber", help="create or update a subscribing bureau's user")
    add.add_argument("--name", required=True, help="e.g. bureau-b; its queues are subscriber.<name>.*")
    add.add_argument("--password", required=True)
    remove = commands.add_parser("remove", help="delete a subscribing bureau's user")
    remove.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    management = Management(args.management_url, args.admin_user, args.admin_password)
    if args.command == "subscriber":
        user = add_subscriber(management, args.vhost, args.name, args.password)
        print(f"user {user}: queues {subscriber_queue_prefix(args.name)}*, reads {', '.join(EVENT_EXCHANGES)}")
    else:
        remove_subscriber(management, args.name)
        print(f"user {USER_PREFIX}{args.name} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
