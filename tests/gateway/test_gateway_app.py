"""The gateway in-process (Werkzeug test client) and its parts on their own: cache, buckets, problems."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from werkzeug.test import Client

from services.common.errors import Unauthenticated
from services.gateway.app import Gateway, create_app
from services.gateway.auth import AuthenticationRequired, TokenVerifier, bearer_token, request_token
from services.gateway.problems import HttpProblem, field_errors
from services.gateway.ratelimit import TokenBuckets
from services.gateway.routes.base import parse_json

from .gateway_support import City, bearer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- token buckets ------------------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_refuses_with_retry_after() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_second=0.5, burst=3, clock=clock)
    decisions = [buckets.take("a") for _ in range(4)]
    assert [decision.allowed for decision in decisions] == [True, True, True, False]
    refused = decisions[-1].headers()
    assert refused["Retry-After"] == "2" and refused["RateLimit-Remaining"] == "0"
    assert refused["RateLimit-Limit"] == "3" and refused["RateLimit-Reset"] == "6"
    assert buckets.take("b").allowed  # another token has its own bucket
    clock.now += 2.0
    assert buckets.take("a").allowed and not buckets.take("a").allowed


def test_buckets_forget_the_least_recently_used_keys() -> None:
    buckets = TokenBuckets(rate_per_second=1, burst=1, max_keys=2, clock=FakeClock())
    for key in ("a", "b", "c"):
        assert buckets.take(key).allowed
    assert buckets.take("a").allowed  # "a" was evicted, i.e. starts full again
    assert not buckets.take("c").allowed


# --- token verification cache -------------------------------------------------------------------------


class FakeAccounts:
    """Stands in for accounts.verify_token; counts calls."""

    def __init__(self, expires_in: timedelta = timedelta(days=30)) -> None:
        self.calls = 0
        self.expires_in = expires_in

    def verify(self, token: str) -> dict[str, Any]:
        self.calls += 1
        if token == "lx_bad":
            raise Unauthenticated("The token is not valid.")
        expires = datetime.now(UTC) + self.expires_in
        return {"bureau_id": 1, "kind": "school", "id": 7, "access": "read", "token_id": 70,
                "expires_at": expires.isoformat()}


def test_verifier_caches_for_the_ttl_then_asks_again() -> None:
    clock, accounts = FakeClock(), FakeAccounts()
    verifier = TokenVerifier(accounts.verify, ttl=30, clock=clock)
    assert verifier.scope_for("Bearer lx_good")["id"] == 7
    assert verifier.scope_for("bearer lx_good")["id"] == 7
    assert accounts.calls == 1
    clock.now += 31
    verifier.scope_for("Bearer lx_good")
    assert accounts.calls == 2


def test_verifier_never_caches_past_the_tokens_expiry() -> None:
    clock, accounts = FakeClock(), FakeAccounts(expires_in=timedelta(seconds=5))
    verifier = TokenVerifier(accounts.verify, ttl=30, clock=clock)
    verifier.scope_for("Bearer lx_soon")
    clock.now += 6
    verifier.scope_for("Bearer lx_soon")
    assert accounts.calls == 2


def test_verifier_caches_rejections_and_forgets_revoked_tokens() -> None:
    clock, accounts = FakeClock(), FakeAccounts()
    verifier = TokenVerifier(accounts.verify, ttl=30, clock=clock)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            verifier.scope_for("Bearer lx_bad")
    assert accounts.calls == 1
    verifier.scope_for("Bearer lx_good")
    verifier.forget_token_id(70)
    verifier.scope_for("Bearer lx_good")
    assert accounts.calls == 3


def test_verifier_is_bounded_and_keeps_no_secrets() -> None:
    verifier = TokenVerifier(FakeAccounts().verify, ttl=30, max_entries=2, clock=FakeClock())
    for index in range(5):
        verifier.scope_for(f"Bearer lx_token{index}")
    assert len(verifier._entries) == 2
    assert not any("lx_" in key for key in verifier._entries)


@pytest.mark.parametrize("header", [None, "", "Token abc", "Bearer", "Bearer  ", "Bearer a b", "Bearer " + "y" * 513])
def test_malformed_authorization_headers(header: str | None) -> None:
    with pytest.raises(AuthenticationRequired):
        bearer_token(header)


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_http_basic_carries_the_token_as_the_secret_or_as_a_lone_key() -> None:
    assert request_token(basic("lx_abcdefg:lx_the-token")) == "lx_the-token"
    assert request_token(basic("lx_the-token:")) == "lx_the-token"
    assert request_token("basic " + basic("k:lx_t")[6:]) == "lx_t"  # the scheme is case-insensitive
    assert request_token("Bearer lx_t") == "lx_t"
    for header in ("Basic !!!", basic("no-colon"), basic(":"), basic("k:a b"), "Basic " + "A" * 800, "Basic /w=="):
        with pytest.raises(AuthenticationRequired):
            request_token(header)


# --- problems and JSON --------------------------------------------------------------------------------


def test_marshmallow_messages_flatten_to_dotted_fields() -> None:
    messages = {"name": ["Missing data for required field."], "member_ids": {1: ["Not a valid integer."]}}
    assert field_errors(messages) == [
        {"field": "name", "reason": "Missing data for required field."},
        {"field": "member_ids.1", "reason": "Not a valid integer."},
    ]


@pytest.mark.parametrize("raw", [b"", b"  ", b"{", b"\xc3\x28", b"NaN", b'{"a": Infinity}', b"[" * 50_000, b"1" * 5000])
def test_unacceptable_json_is_a_400_problem(raw: bytes) -> None:
    with pytest.raises(HttpProblem) as raised:
        parse_json(raw)
    assert raised.value.status == 400


# --- the app in-process, against the real accounts service --------------------------------------------


@pytest.fixture
def strict_app(platform_config: dict[str, Any], city: City) -> Iterator[Gateway]:
    app = create_app({
        "AMQP_URI": platform_config["AMQP_URI"], "GATEWAY_RATE_LIMIT_BURST": 3, "GATEWAY_RATE_LIMIT_PER_SECOND": 0.5,
    })
    yield app
    app.close()


def test_in_process_rate_limit(strict_app: Gateway, city: City) -> None:
    client = Client(strict_app)
    headers = bearer(city.tokens["spare_one"])
    statuses = [client.get("/v1/me", headers=headers).status_code for _ in range(3)]
    refused = client.get("/v1/me", headers=headers)
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429 and refused.mimetype == "application/problem+json"
    assert refused.headers["Retry-After"] == "2"


def test_in_process_errors_and_metrics(strict_app: Gateway, city: City) -> None:
    client = Client(strict_app)
    headers = bearer(city.tokens["bureau_read"])
    assert client.get("/v1/me", headers=headers).get_json()["kind"] == "bureau"
    head = client.head("/v1/me", headers=headers)
    assert head.status_code == 200 and head.data == b""
    missing = client.get("/v2/anything")
    assert missing.status_code == 404 and missing.get_json()["instance"] == "/v2/anything"
    assert client.delete("/v1/schools", headers=headers).status_code == 405
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'route="unmatched"' in metrics and 'route="/v1/me"' in metrics
    assert "/v2/anything" not in metrics  # unknown paths never become label values
