"""The composition root: the one place that names lianxiao's services.

Everything that needs the list of services reads it from here: the runner
(`python -m services.common.runner <name>`), the migrations command, `make run` (deploy/run_local.py),
the gateway's route table and its typed-error registry, and the tests. `services/common` itself names
no service. Only dotted names are written here, so reading this list imports no service.

To add a service: write its folder (service.py, schemas.py, exceptions.py, models.py, migrations/),
its gateway routes module if it has a public API, and one `Service(...)` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    """One nameko service: its name on the broker and where its parts are."""

    name: str
    # "module:Class" of the nameko service class; imported only by the process that runs it.
    service_class: str
    # The gateway's routes for this service (a module with `ROUTES`), or None if it has no public API.
    gateway_routes: str | None

    @property
    def package(self) -> str:
        return f"services.{self.name}"

    @property
    def exceptions_module(self) -> str:
        """The face module whose import registers the service's typed RPC errors."""
        return f"{self.package}.exceptions"

    @property
    def models_module(self) -> str:
        """Where the service's tables (`metadata`) are; every service owns one database."""
        return f"{self.package}.models"

    def load_class(self) -> type:
        module_name, _, class_name = self.service_class.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


SERVICES: tuple[Service, ...] = (
    Service("accounts", "services.accounts.service:AccountsService", "services.gateway.routes.accounts"),
    Service("activities", "services.activities.service:ActivitiesService", "services.gateway.routes.activities"),
    Service("reporting", "services.reporting.service:ReportingService", "services.gateway.routes.reporting"),
    Service(
        "classroom_relay", "services.classroom_relay.service:ClassroomRelayService", "services.gateway.routes.relay"
    ),
)
SERVICE_NAMES: tuple[str, ...] = tuple(service.name for service in SERVICES)


def service(name: str) -> Service:
    for candidate in SERVICES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"No service {name!r}; the services are {', '.join(SERVICE_NAMES)}.")
