"""Hostile clients of the gateway (issue 12, items 10 and 13): garbage tokens are limited per client
address before accounts is asked; tokens are minted within limits. In-process, accounts stubbed where
only the number of verifications matters."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from werkzeug.test import Client

from services.common.errors import Unauthenticated
from services.gateway.app import Gateway, create_app
from services.gateway.clients import client_key, parse_networks


class CountingAccounts:
    def __init__(self) -> None:
        self.calls = 0

    def verify(self, token: str) -> dict[str, Any]:
        self.calls += 1
        raise Unauthenticated("The token is not valid.")


@pytest.fixture
def app_with_counting_accounts() -> tuple[Gateway, CountingAccounts]:
    app = create_app({"GATEWAY_AUTH_ATTEMPTS_BURST": 10, "GATEWAY_AUTH_ATTEMPTS_PER_SECOND": 1})
    accounts = CountingAccounts()
    app.verifier.verify = accounts.verify
    yield app, accounts
    app.close()


def garbage(client: Client, address: str, real_ip: str | None = None) -> int:
    headers = {"Authorization": f"Bearer lx_{secrets.token_urlsafe(32)}"}
    if real_ip:
        headers["X-Real-IP"] = real_ip
    return client.get("/v1/me", headers=headers, environ_base={"REMOTE_ADDR": address}).status_code


def test_garbage_tokens_are_limited_per_address_before_accounts_is_asked(app_with_counting_accounts) -> None:
    app, accounts = app_with_counting_accounts
    client = Client(app)
    statuses = [garbage(client, "203.0.113.7") for _ in range(40)]
    assert statuses[:10] == [401] * 10
    assert statuses[10:].count(429) >= 29  # one may have refilled meanwhile
    assert accounts.calls <= 11  # before: 40 RPCs to accounts
    assert garbage(client, "198.51.100.9") == 401  # another client is not affected
    assert "lianxiao_gateway_auth_attempts_refused_total" in client.get("/metrics").get_data(as_text=True)


def test_a_forged_real_ip_helps_only_through_the_trusted_proxy(app_with_counting_accounts) -> None:
    app, _accounts = app_with_counting_accounts
    client = Client(app)
    # From an untrusted peer, rotating X-Real-IP changes nothing: the peer's address is the key.
    statuses = [garbage(client, "203.0.113.8", real_ip=f"192.0.2.{n}") for n in range(20)]
    assert statuses.count(429) >= 9
    # Through nginx (a trusted peer), the header is the client's address.
    assert garbage(client, "127.0.0.1", real_ip="192.0.2.200") == 401


def test_client_keys() -> None:
    trusted = parse_networks("127.0.0.1/32,::1/128")
    assert client_key({"REMOTE_ADDR": "203.0.113.1", "HTTP_X_REAL_IP": "192.0.2.1"}, trusted) == "203.0.113.1"
    assert client_key({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REAL_IP": "192.0.2.1"}, trusted) == "192.0.2.1"
    assert client_key({"REMOTE_ADDR": "", "HTTP_X_REAL_IP": "192.0.2.2"}, trusted) == "192.0.2.2"  # Unix socket
    assert client_key({"REMOTE_ADDR": "2001:db8::1:2"}, trusted) == "2001:db8::/64"
    assert client_key({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REAL_IP": "not an address"}, trusted) == "127.0.0.1"


def test_random_methods_cannot_grow_the_metrics(app_with_counting_accounts) -> None:
    app, _accounts = app_with_counting_accounts
    client = Client(app)
    for _ in range(300):
        client.open("/v1/me", method=f"X{secrets.token_hex(6).upper()}")
        client.open(f"/v9/{secrets.token_hex(8)}", method="GET")
    metrics = client.get("/metrics").get_data(as_text=True)
    methods = {line.split('method="')[1].split('"')[0] for line in metrics.splitlines() if 'method="' in line}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert len(metrics) < 100_000  # before: every random method added ~2.4 KB of series
