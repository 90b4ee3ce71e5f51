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
import importlib
import logging
import os
import signal
from typing import Any

from nameko.runners import ServiceRunner

from services.common.config import amqp_uri

SERVICE_CLASSES = {
    "accounts": "services.accounts.service:AccountsService",
    "activities": "services.activities.service:ActivitiesService",
    "reporting": "services.reporting.service:ReportingService",
    "classroom_relay": "services.classroom_relay.service:ClassroomRelayService",
}


def service_class(name: str) -> type:
    module_name, _, class_name = SERVICE_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def service_config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "AMQP_URI": amqp_uri(),
        "serializer": "json",
        "max_workers": int(os.environ.get("MAX_WORKERS", "10")),
        "parent_calls_tracked": 10,
    }
    port = os.environ.get(f"{name.upper()}_METRICS_PORT", os.environ.get("METRICS_PORT"))
    if port:
        config["METRICS_PORT"] = int(port)
    for key, value in os.environ.items():
        if key.endswith("DATABASE_URL"):
            config[key] = value
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one lianxiao nameko service.")
    parser.add_argument("service", choices=sorted(SERVICE_CLASSES))
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {args.service} %(levelname)s %(name)s: %(message)s",
    )
    runner = ServiceRunner(service_config(args.service))
    runner.add_service(service_class(args.service))

    def stop(_signum: int, _frame: Any) -> None:
        eventlet.spawn_n(runner.stop)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.start()
    logging.getLogger(__name__).info("%s started", args.service)
    runner.wait()


if __name__ == "__main__":
    main()
