"""When accounts or the broker is gone, the gateway answers 503 problems within a bounded time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import requests
from werkzeug.test import Client

from services.accounts.service import AccountsService
from services.gateway.app import create_app

from .gateway_support import Gunicorn, bearer, build_city

PROBLEM = "application/problem+json"


def timed_get(url: str, token: str | None = None) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.get(url, headers=bearer(token) if token else {}, timeout=30)
    return response, time.monotonic() - started


def test_accounts_stopped_gives_503_within_six_seconds_then_recovers(
    service_config: dict[str, Any], runner_factory: Callable[..., Any], start_gunicorn: Callable[..., Gunicorn]
) -> None:
    accounts = runner_factory(service_config, AccountsService)
    accounts.start()
    city = build_city(service_config["DATABASE_URL"].replace("{service}", "accounts"))
    token = city.tokens["bureau_read"]
    # One worker, so the token cached by the first request is the one the later requests see.
    server = start_gunicorn(service_config["AMQP_URI"], GATEWAY_WORKERS="1")
    assert timed_get(f"{server.url}/v1/schools", token)[0].status_code == 200

    accounts.stop()
    response, elapsed = timed_get(f"{server.url}/v1/schools", token)
    assert response.status_code == 503 and response.headers["Content-Type"].startswith(PROBLEM)
    assert "accounts" in response.json()["detail"] and response.headers["Retry-After"]
    assert elapsed < 6.5, elapsed

    ready, elapsed = timed_get(f"{server.url}/readyz")
    assert ready.status_code == 503 and elapsed < 3.0, elapsed
    assert "accounts: unavailable" in ready.json()["detail"] and "broker: ok" in ready.json()["detail"]

    # The thread's RPC client was dropped after the timeout; a new one works once accounts is back.
    runner_factory(service_config, AccountsService).start()
    response, elapsed = timed_get(f"{server.url}/v1/schools", token)
    assert response.status_code == 200, response.text
    assert timed_get(f"{server.url}/readyz")[0].status_code == 200


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_broker_unreachable_gives_503_at_once() -> None:
    app = create_app({"AMQP_URI": f"amqp://guest:guest@127.0.0.1:{closed_port()}/"})
    client = Client(app)
    started = time.monotonic()
    response = client.get("/v1/schools", headers=bearer("lx_any-token-at-all"))
    assert response.status_code == 503 and response.mimetype == PROBLEM
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "broker: unreachable" in ready.get_json()["detail"]
    assert time.monotonic() - started < 6.0
    assert client.get("/healthz").status_code == 200  # the process itself is fine
    app.close()
