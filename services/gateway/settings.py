"""The gateway's settings (environment, or the `config` mapping given to `create_app`, same names)."""

from __future__ import annotations

from services.common.settings import setting

BIND = setting("GATEWAY_BIND", str, "127.0.0.1:8080", "gateway address")
WORKERS = setting("GATEWAY_WORKERS", int, 2, "gunicorn gthread worker processes")
THREADS = setting("GATEWAY_THREADS", int, 8, "threads per worker (each keeps one RPC connection)")
ACCESS_LOG = setting(
    "GATEWAY_ACCESS_LOG", str, None, "gunicorn access log file (`-`: stdout); never includes Authorization")
GUNICORN_LOG_LEVEL = setting("GATEWAY_LOG_LEVEL", str, "info", "gunicorn's own log level")
RPC_TIMEOUT_SECONDS = setting(
    "GATEWAY_RPC_TIMEOUT_SECONDS", float, 5.0, "a service that does not answer by then gives 503")
READINESS_TIMEOUT_SECONDS = setting(
    "GATEWAY_READINESS_TIMEOUT_SECONDS", float, 2.0, "how long `/readyz` waits for the broker")
AUTH_CACHE_SECONDS = setting(
    "GATEWAY_AUTH_CACHE_SECONDS", float, 30.0, "how long a verified token is cached per worker")
AUTH_CACHE_ENTRIES = setting("GATEWAY_AUTH_CACHE_ENTRIES", int, 10_000, "verified tokens cached per worker")
RATE_LIMIT_PER_SECOND = setting(
    "GATEWAY_RATE_LIMIT_PER_SECOND", float, 20.0, "requests per second per token, per worker")
RATE_LIMIT_BURST = setting("GATEWAY_RATE_LIMIT_BURST", int, 60, "burst of requests per token, per worker")
CONTROL_SOCKET = setting(
    "GATEWAY_CONTROL_SOCKET", str, None,
    "a path of this instance's own for gunicorn's control socket (`gunicornc`); off when unset",
    default_text="off")
METRICS_DIR = setting(
    "PROMETHEUS_MULTIPROC_DIR", str, None,
    "where gunicorn's workers write their metrics samples for `/metrics` to merge",
    default_text="a fresh temporary directory")
AUTH_ATTEMPTS_PER_SECOND = setting(
    "GATEWAY_AUTH_ATTEMPTS_PER_SECOND", float, 5.0,
    "token verifications per second per client address (tokens not already cached), checked before accounts is asked")
AUTH_ATTEMPTS_BURST = setting(
    "GATEWAY_AUTH_ATTEMPTS_BURST", int, 20, "burst of token verifications per client address")
TRUSTED_PROXIES = setting(
    "GATEWAY_TRUSTED_PROXIES", str, "127.0.0.1/32,::1/128",
    "peers (the reverse proxy) whose `X-Real-IP` names the client (see gateway/clients.py)")
