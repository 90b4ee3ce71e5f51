"""The gateway: a plain Werkzeug WSGI app, the only public HTTP surface of lianxiao.

Per request: route (404/405 as problems) → bearer token verified through accounts (cached, see
auth.py) → per-token rate limit → handler (validates input with the services' schemas, calls them over
RPC, see rpc.py) → JSON. Every failure becomes problem+json (problems.py); every request is counted
and timed (metrics.py). Served by gunicorn gthread workers (gunicorn.conf.py); no eventlet here.

Configuration: AMQP_URI and the GATEWAY_* settings of settings.py, from the environment or the `config`
mapping given to `create_app` (same names).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kombu import Connection
from nameko.exceptions import RemoteError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from services.common.config import AMQP_URI
from services.common.errors import LianxiaoError, ServiceUnavailable
from services.gateway import problems
from services.gateway import settings as gateway_settings
from services.gateway.auth import AuthenticationRequired, TokenVerifier
from services.gateway.clients import client_key, parse_networks
from services.gateway.metrics import GatewayMetrics
from services.gateway.openapi import build_spec
from services.gateway.ratelimit import TokenBuckets
from services.gateway.routes import all_routes
from services.gateway.routes.base import Call, IdConverter, Reply, Route
from services.gateway.rpc import RpcPool
from services.gateway.schemas import Health

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"  # metrics label for 404s, so probes of random paths cannot explode cardinality


@dataclass(frozen=True)
class Settings:
    amqp_uri: str = AMQP_URI.default
    rpc_timeout_seconds: float = gateway_settings.RPC_TIMEOUT_SECONDS.default
    readiness_timeout_seconds: float = gateway_settings.READINESS_TIMEOUT_SECONDS.default
    auth_cache_seconds: float = gateway_settings.AUTH_CACHE_SECONDS.default
    auth_cache_entries: int = gateway_settings.AUTH_CACHE_ENTRIES.default
    rate_limit_per_second: float = gateway_settings.RATE_LIMIT_PER_SECOND.default
    rate_limit_burst: int = gateway_settings.RATE_LIMIT_BURST.default
    auth_attempts_per_second: float = gateway_settings.AUTH_ATTEMPTS_PER_SECOND.default
    auth_attempts_burst: int = gateway_settings.AUTH_ATTEMPTS_BURST.default
    trusted_proxies: str = gateway_settings.TRUSTED_PROXIES.default

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None) -> Settings:
        """Values from `config`, else from the environment, else the declared defaults."""
        return cls(
            amqp_uri=AMQP_URI.get(config),
            rpc_timeout_seconds=gateway_settings.RPC_TIMEOUT_SECONDS.get(config),
            readiness_timeout_seconds=gateway_settings.READINESS_TIMEOUT_SECONDS.get(config),
            auth_cache_seconds=gateway_settings.AUTH_CACHE_SECONDS.get(config),
            auth_cache_entries=gateway_settings.AUTH_CACHE_ENTRIES.get(config),
            rate_limit_per_second=gateway_settings.RATE_LIMIT_PER_SECOND.get(config),
            rate_limit_burst=gateway_settings.RATE_LIMIT_BURST.get(config),
            auth_attempts_per_second=gateway_settings.AUTH_ATTEMPTS_PER_SECOND.get(config),
            auth_attempts_burst=gateway_settings.AUTH_ATTEMPTS_BURST.get(config),
            trusted_proxies=gateway_settings.TRUSTED_PROXIES.get(config),
        )


# --- endpoints of the gateway itself (no token needed) ------------------------------------------------


def healthz(call: Call) -> Reply:
    return Reply({"status": "ok"})


def broker_reachable(amqp_uri: str, timeout: float) -> bool:
    try:
        with Connection(amqp_uri, connect_timeout=timeout) as connection:
            # No pause between attempts: a readiness probe wants the answer, not a retry schedule.
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return True
    except Exception:  # any failure means "not reachable"; the reason is not the prober's business
        return False


def readyz(call: Call) -> Reply:
    gateway = call.gateway
    timeout = gateway.settings.readiness_timeout_seconds
    checks: dict[str, str] = {"broker": "ok"}
    if not broker_reachable(gateway.settings.amqp_uri, timeout):
        checks = {"broker": "unreachable", "accounts": "not checked"}
    else:
        try:
            # accounts' health RPC touches its database: one answer proves service and database.
            gateway.rpc.call("accounts", "health", timeout=timeout)
            checks["accounts"] = "ok"
        except ServiceUnavailable:
            checks["accounts"] = "unavailable"
        except (LianxiaoError, RemoteError):
            checks["accounts"] = "failing (database?)"
    if all(state == "ok" for state in checks.values()):
        return Reply({"status": "ok", "checks": checks})
    summary = ", ".join(f"{name}: {state}" for name, state in checks.items())
    raise problems.HttpProblem(503, f"Not ready ({summary}).", headers={"Retry-After": "5"})


def metrics_endpoint(call: Call) -> Response:
    body, content_type = call.gateway.metrics.exposition()
    return Response(body, content_type=content_type)


def openapi_document(call: Call) -> Response:
    return Response(call.gateway.openapi_json(), mimetype="application/json")


SYSTEM_ROUTES = [
    Route("GET", "/healthz", healthz, "The gateway process is up", "operations", Health, authenticated=False),
    Route("GET", "/readyz", readyz, "Broker, accounts and its database answer within 2 s", "operations", Health,
          authenticated=False),
    Route("GET", "/metrics", metrics_endpoint, "Prometheus metrics of all gateway workers", "operations",
          authenticated=False, response_content_type="text/plain"),
    Route("GET", "/openapi.json", openapi_document, "This API's OpenAPI document", "operations",
          authenticated=False),
]


class Gateway:
    """The WSGI application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = GatewayMetrics()
        self.rpc = RpcPool(settings.amqp_uri, settings.rpc_timeout_seconds, observe=self.metrics.observe_rpc)
        self.verifier = TokenVerifier(
            lambda token: self.rpc.call("accounts", "verify_token", token),
            ttl=settings.auth_cache_seconds,
            max_entries=settings.auth_cache_entries,
            on_lookup=self.metrics.observe_auth_lookup,
        )
        self.buckets = TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst)
        self.attempt_buckets = TokenBuckets(settings.auth_attempts_per_second, settings.auth_attempts_burst)
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self.routes = [*SYSTEM_ROUTES, *all_routes()]
        self.routes_by_name = {route.name: route for route in self.routes}
        self.url_map = Map(
            [Rule(route.path, methods=[route.method], endpoint=route.name) for route in self.routes],
            converters={"id": IdConverter},
        )
        self._openapi_json: bytes | None = None

    def openapi_json(self) -> bytes:
        if self._openapi_json is None:  # built once per worker, on first request (a benign race)
            self._openapi_json = json.dumps(build_spec(self.routes), ensure_ascii=False).encode()
        return self._openapi_json

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        started = time.perf_counter()
        request = Request(environ)
        route_label = UNMATCHED_ROUTE
        try:
            route, values = self._match(request)
            route_label = route.path
            response = self._handle(request, route, values)
        except Exception as error:
            response = self._error_response(error, request)
        self.metrics.observe_request(route_label, request.method, response.status_code, time.perf_counter() - started)
        return response(environ, start_response)

    def _match(self, request: Request) -> tuple[Route, Mapping[str, Any]]:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
        except MethodNotAllowed as error:
            # Werkzeug offers a rule's other methods before it converts the path, so an id out of range
            # (e.g. PATCH /v1/teachers/2147483648) came back as 405. Only a path that some method really
            # accepts deserves 405; anything else is simply no resource (404, as documented).
            if not any(self._path_matches(adapter, method) for method in error.valid_methods or ()):
                raise NotFound() from error
            raise
        return self.routes_by_name[endpoint], values

    @staticmethod
    def _path_matches(adapter: Any, method: str) -> bool:
        try:
            adapter.match(method=method)
        except HTTPException:
            return False
        return True

    def _handle(self, request: Request, route: Route, values: Mapping[str, Any]) -> Response:
        scope = None
        limit_headers: dict[str, str] = {}
        try:
            if route.authenticated:
                scope = self.verifier.scope_for(
                    request.headers.get("Authorization"), before_verifying=lambda: self._admit_attempt(request)
                )
                decision = self.buckets.take(f"token:{scope.get('token_id')}")
                limit_headers = decision.headers()
                if not decision.allowed:
                    self.metrics.observe_rate_limited("token")
                    raise problems.HttpProblem(
                        429, f"Rate limit of this token reached; retry in {decision.retry_after_seconds} s.",
                        headers=limit_headers,
                    )
            result = route.handler(Call(self, request, route, scope), **values)
            response = result if isinstance(result, Response) else self._json_response(result)
        except Exception as error:
            response = self._error_response(error, request)
        for name, value in limit_headers.items():
            response.headers.setdefault(name, value)
        return response

    def _admit_attempt(self, request: Request) -> None:
        """A token accounts has to check costs an RPC: each client address gets only so many (issue 12, item 13)."""
        decision = self.attempt_buckets.take(f"address:{client_key(request.environ, self.trusted_proxies)}")
        if not decision.allowed:
            self.metrics.observe_rate_limited("address")
            raise problems.HttpProblem(
                429, "Too many token checks from this address; retry in "
                f"{decision.retry_after_seconds} s.", headers={"Retry-After": str(decision.retry_after_seconds)},
            )

    @staticmethod
    def _json_response(reply: Reply) -> Response:
        response = Response(
            json.dumps(reply.body, ensure_ascii=False, default=str), status=reply.status, mimetype="application/json"
        )
        for name, value in reply.headers.items():
            response.headers[name] = value
        return response

    @staticmethod
    def _error_response(error: Exception, request: Request) -> Response:
        instance = request.path
        if isinstance(error, problems.HttpProblem):
            return problems.from_http_problem(error, instance)
        if isinstance(error, AuthenticationRequired):
            return problems.problem_response(
                401, error.detail, headers={"WWW-Authenticate": 'Bearer realm="lianxiao"'}, instance=instance
            )
        if isinstance(error, LianxiaoError):
            return problems.from_domain_error(error, instance)
        if isinstance(error, HTTPException):
            return problems.from_http_exception(error, instance)
        if isinstance(error, RemoteError):
            log.error("unexpected error from a service on %s %s: %s", request.method, request.path, error.exc_type)
        else:
            log.exception("unexpected error on %s %s", request.method, request.path)
        return problems.internal_error(instance)

    def close(self) -> None:
        self.rpc.close()


def create_app(config: Mapping[str, Any] | None = None) -> Gateway:
    return Gateway(Settings.load(config))
