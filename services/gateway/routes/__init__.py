"""The public API's routes, one module per service behind the gateway.

How to add a service's routes (e.g. activities):

1. Write `services/gateway/routes/activities.py` with a module-level `ROUTES: list[Route]`
   (see `routes/base.py` and `routes/accounts.py`): each `Route` names its method, Werkzeug path
   (use `<id:name>` for ids), handler, summary, tag and its marshmallow schemas — taken from the
   service's own `schemas.py`, never copied.
2. Name the module as the service's `gateway_routes` in `services/platform.py` — one line.

That is all: the URL map, the handlers and the `/openapi.json` paths are all built from these Route
objects, and every route gets authentication, rate limiting, problem+json errors and metrics.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from services.gateway.routes.base import Route
from services.platform import SERVICES

ROUTE_MODULES: list[ModuleType] = [
    importlib.import_module(service.gateway_routes) for service in SERVICES if service.gateway_routes
]


def all_routes() -> list[Route]:
    routes = [route for module in ROUTE_MODULES for route in module.ROUTES]
    names = [route.name for route in routes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RuntimeError(f"Routes defined twice: {', '.join(duplicates)}")
    return routes
