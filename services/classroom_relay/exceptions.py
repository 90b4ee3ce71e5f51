"""The relay's errors: the shared typed errors, plus the ones only the relay raises."""

from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceUnavailable


class AdmissionRefused(Conflict):
    """Admitting a session or branch would push a link past its budget; `fields` carries the numbers."""


class DataPlaneUnavailable(ServiceUnavailable):
    """The data plane has not answered yet (addresses for an SDP are not known)."""


__all__ = [
    "AdmissionRefused",
    "Conflict",
    "DataPlaneUnavailable",
    "Forbidden",
    "InvalidInput",
    "NotFound",
]
