"""The reporting service's errors: the platform's typed errors, so they keep their type over RPC."""

from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound

__all__ = ["Conflict", "Forbidden", "InvalidInput", "NotFound"]
