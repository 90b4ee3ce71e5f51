"""Tables owned by the reporting service (its real schema arrives with its own issue)."""

from sqlalchemy import MetaData

from services.common.events import Outbox

metadata = MetaData()
outbox = Outbox("reporting", metadata)
