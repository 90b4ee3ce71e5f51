"""The `health` RPC every service answers: the service runs and its database answers."""

from __future__ import annotations

from typing import Any

from services.common.entrypoints import rpc


class HealthRpc:
    """Mix into a service class that has `name` and a `db` (services.common.db.Database)."""

    name: str
    db: Any

    @rpc
    def health(self) -> dict[str, Any]:
        self.db.connection().exec_driver_sql("SELECT 1")
        return {"service": self.name, "status": "ok"}
