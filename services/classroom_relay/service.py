"""The classroom_relay service. For now it runs, migrates its database and answers `health`; its real
entrypoints arrive with its own issue."""

from services.common.db import Database
from services.common.health import HealthRpc
from services.common.metrics import ServiceMetrics


class ClassroomRelayService(HealthRpc):
    name = "classroom_relay"

    db = Database("classroom_relay")
    metrics = ServiceMetrics("classroom_relay")
