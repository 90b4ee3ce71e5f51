"""The settings every service shares, read through services/common/settings.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from services.common.settings import setting

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT_PORT = 15672
# Each service owns its own database; `{service}` in the URL is replaced by the service name so one
# variable can name a database per service (e.g. postgresql://db/lianxiao_{service}).
DEFAULT_DATABASE_URL = f"sqlite:///{REPO_ROOT / 'var' / '{service}.db'}"

AMQP_URI = setting("AMQP_URI", str, DEFAULT_AMQP_URI, "RabbitMQ")
DATABASE_URL = setting(
    "DATABASE_URL", str, DEFAULT_DATABASE_URL,
    "every service's database; `{service}` is replaced by the service's name (e.g. "
    "`postgresql://db/lianxiao_{service}`)",
    default_text="`sqlite:///<repo>/var/{service}.db`",
)
SERVICE_DATABASE_URL = setting(
    "<SERVICE>_DATABASE_URL", str, None, "one service's database, e.g. `ACCOUNTS_DATABASE_URL`")
SERVICE_METRICS_PORT = setting(
    "<SERVICE>_METRICS_PORT", int, None, "where one service serves `/metrics`, e.g. `ACCOUNTS_METRICS_PORT`",
    default_text="none (`make run`: 9101–9105)")
METRICS_PORT = setting("METRICS_PORT", int, None, "where a service serves `/metrics` when no `<SERVICE>_METRICS_PORT`")
METRICS_ADDR = setting("METRICS_ADDR", str, "0.0.0.0", "the address services' `/metrics` listen on")
MAX_WORKERS = setting("MAX_WORKERS", int, 10, "nameko workers per service")
QUEUE_TYPE = setting(
    "LIANXIAO_QUEUE_TYPE", str, "classic",
    "type of the durable event and dead-letter queues; `quorum` replicates them across a RabbitMQ cluster "
    "(an existing classic queue cannot change type: delete it first)",
    default_text="`classic` (Kubernetes: `quorum`)")
WAIT_FOR_TIMEOUT = setting(
    "WAIT_FOR_TIMEOUT", float, 180.0,
    "how long `python -m services.common.wait_for` waits for the broker, databases or migrations (containers)")
RABBITMQ_MANAGEMENT_URL = setting(
    "RABBITMQ_MANAGEMENT_URL", str, None,
    "RabbitMQ's management API, with AMQP_URI's user: replay reads a queue's bindings there, "
    "`lianxiao-admin broker-user-create` makes users there", default_text="`http://<AMQP_URI host>:15672`")
LOG_LEVEL = setting("LOG_LEVEL", str, "INFO", "log level of every process")
SCOPE_SECRET = setting(
    "LIANXIAO_SCOPE_SECRET", str, None,
    "accounts signs verified scopes with it and every service refuses unsigned ones (services/common/scope.py); "
    "unset: not signed, not checked",
    default_text="generated per `make run`; required by compose, a Secret in Kubernetes")


def amqp_uri() -> str:
    return AMQP_URI.get()


@dataclass(frozen=True)
class ManagementApi:
    """RabbitMQ's management API for the broker and vhost of an AMQP URI, with that URI's user."""

    base_url: str
    auth: tuple[str, str]
    vhost: str

    @classmethod
    def of(cls, amqp: str, management_url: str | None = None) -> ManagementApi:
        parts = urlsplit(amqp)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        default_url = f"http://{parts.hostname or '127.0.0.1'}:{MANAGEMENT_PORT}"
        auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
        return cls((management_url or RABBITMQ_MANAGEMENT_URL.get() or default_url).rstrip("/"), auth, vhost)


def database_url(service: str, config: dict[str, Any] | None = None) -> str:
    """The database URL of one service: `<SERVICE>_DATABASE_URL`, else `DATABASE_URL` with `{service}`."""
    url = SERVICE_DATABASE_URL.get(config, service) or DATABASE_URL.get(config)
    return url.replace("{service}", service)


def metrics_port(service: str, config: dict[str, Any] | None = None) -> int | None:
    """Where a service serves /metrics: nameko config's METRICS_PORT (0: any free port), else
    `<SERVICE>_METRICS_PORT`, else `METRICS_PORT`; None: no metrics server."""
    configured = (config or {}).get("METRICS_PORT")
    if configured is not None and str(configured) != "":
        return int(configured)
    port = SERVICE_METRICS_PORT.get(service=service)
    return port if port is not None else METRICS_PORT.get()


def durable_queue_arguments() -> dict[str, str] | None:
    """`LIANXIAO_QUEUE_TYPE=quorum` makes the platform's durable event queues quorum queues."""
    queue_type = QUEUE_TYPE.get()
    return {"x-queue-type": queue_type} if queue_type != "classic" else None
# Recording and playback (docs/recording.md): shared by the recorder, the relay, the resources service and nginx.
RECORDINGS_ROOT = setting(
    "RECORDINGS_ROOT", str, "var/recordings",
    "where recordings are written and served from (a PersistentVolumeClaim in Kubernetes)")
PLAYBACK_SECRET = setting(
    "PLAYBACK_SECRET", str, None,
    "signs playback URLs; nginx checks them with the same secret (`make run` generates one into var/)")
PLAYBACK_URL_LIFETIME = setting(
    "PLAYBACK_URL_LIFETIME", int, 7200, "seconds a signed playback URL stays valid")
MEDIA_PUBLIC_URL = setting(
    "MEDIA_PUBLIC_URL", str, "",
    "the public base URL of nginx's `/media/` (empty: URLs are relative to the API's own host)")
