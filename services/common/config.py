"""Configuration from the environment, in one place for every service and the gateway."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT_PORT = 15672
# Each service owns its own database; `{service}` in the URL is replaced by the service name so one
# variable can name a database per service (e.g. postgresql://db/lianxiao_{service}).
DEFAULT_DATABASE_URL = f"sqlite:///{REPO_ROOT / 'var' / '{service}.db'}"


def amqp_uri() -> str:
    return os.environ.get("AMQP_URI", DEFAULT_AMQP_URI)


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
        return cls((management_url or os.environ.get("RABBITMQ_MANAGEMENT_URL") or default_url).rstrip("/"),
                   auth, vhost)


def database_url(service: str, config: dict | None = None) -> str:
    """The database URL of one service: `<SERVICE>_DATABASE_URL`, else `DATABASE_URL` with `{service}`."""
    config = config or {}
    specific_key = f"{service.upper()}_DATABASE_URL"
    url = (
        config.get(specific_key)
        or os.environ.get(specific_key)
        or config.get("DATABASE_URL")
        or os.environ.get("DATABASE_URL")
        or DEFAULT_DATABASE_URL
    )
    return url.replace("{service}", service)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def durable_queue_arguments() -> dict[str, str] | None:
    """`LIANXIAO_QUEUE_TYPE=quorum` makes the platform's durable event queues quorum queues (replicated
    across a RabbitMQ cluster). An existing classic queue cannot change type: delete it first."""
    queue_type = os.environ.get("LIANXIAO_QUEUE_TYPE", "classic")
    return {"x-queue-type": queue_type} if queue_type != "classic" else None
