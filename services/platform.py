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
import sys
from dataclasses import dataclass

from services.common.settings import Setting, declared, markdown_table, setting


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
    Service("resources", "services.resources.service:ResourcesService", "services.gateway.routes.resources"),
)
SERVICE_NAMES: tuple[str, ...] = tuple(service.name for service in SERVICES)


# Modules that declare settings (services/common/settings.py); README's table lists them all.
SETTINGS_MODULES = (
    "services.common.config",
    "services.gateway.settings",
    "services.classroom_relay.settings",
    "services.classroom_relay.ingest_settings",
    "services.classroom_relay.recorder_settings",
    "services.resources.settings",
)
LOCAL_METRICS_PORT_BASE = setting(
    "METRICS_PORT_BASE", int, 9101,
    "`make run`: the services' metrics ports count up from here (then the relay data plane's)")


def all_settings() -> list[Setting]:
    """Every setting of the platform, part by part in the order of SETTINGS_MODULES, then `make run`'s."""
    for module in SETTINGS_MODULES:
        importlib.import_module(module)
    order = {module: index for index, module in enumerate(SETTINGS_MODULES)}
    return sorted(declared(), key=lambda item: order.get(item.module, len(order)))


def service(name: str) -> Service:
    for candidate in SERVICES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"No service {name!r}; the services are {', '.join(SERVICE_NAMES)}.")


def main(argv: list[str]) -> None:
    if argv != ["settings-table"]:
        sys.exit("usage: python -m services.platform settings-table  (README's configuration table)")
    print(markdown_table(all_settings()), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
