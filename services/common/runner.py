"""Run one nameko service in this process: `python -m services.common.runner accounts`.

Used by `make run`, the Kubernetes Deployments and the tests, so every service starts the same way:
configuration from the environment (README, "Configuration"), eventlet patched first.
"""

# ruff: noqa: E402  (eventlet must be patched before anything else is imported)
from __future__ import annotations

import eventlet

import services  # noqa: F401  (silences eventlet's notice before eventlet is imported)

eventlet.monkey_patch()

import argparse
import logging
import os
import signal
from typing import Any

from nameko.runners import ServiceRunner

from services import platform
from services.common.config import LOG_LEVEL, MAX_WORKERS, amqp_uri, metrics_port


def service_config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "AMQP_URI": amqp_uri(),
        "serializer": "json",
        "max_workers": MAX_WORKERS.get(),
        "parent_calls_tracked": 10,
    }
    port = metrics_port(name)
    if port is not None:
        config["METRICS_PORT"] = port
    for key, value in os.environ.items():
        if key.endswith("DATABASE_URL"):
            config[key] = value
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one lianxiao nameko service.")
    parser.add_argument("service", choices=sorted(platform.SERVICE_NAMES))
    args = parser.parse_args()
    logging.basicConfig(
        level=LOG_LEVEL.get(),
        format=f"%(asctime)s {args.service} %(levelname)s %(name)s: %(message)s",
    )
    runner = ServiceRunner(service_config(args.service))
    runner.add_service(platform.service(args.service).load_class())

    def stop(_signum: int, _frame: Any) -> None:
        eventlet.spawn_n(runner.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.start()
    logging.getLogger(__name__).info("%s started", args.service)
    runner.wait()


if __name__ == "__main__":
    main()
