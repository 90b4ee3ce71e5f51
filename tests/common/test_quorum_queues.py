"""LIANXIAO_QUEUE_TYPE=quorum: the platform's durable event queues become quorum queues."""

from __future__ import annotations

import pytest

from services.common.config import durable_queue_arguments
from services.reporting.service import ReportingService


def test_classic_queues_unless_asked(monkeypatch):
    monkeypatch.delenv("LIANXIAO_QUEUE_TYPE", raising=False)
    assert durable_queue_arguments() is None
    monkeypatch.setenv("LIANXIAO_QUEUE_TYPE", "quorum")
    assert durable_queue_arguments() == {"x-queue-type": "quorum"}


@pytest.mark.integration
def test_event_queues_are_declared_as_quorum_queues(monkeypatch, container_factory, service_config, rabbit_manager):
    monkeypatch.setenv("LIANXIAO_QUEUE_TYPE", "quorum")
    container_factory(ReportingService, service_config).start()
    vhost = service_config["AMQP_URI"].rsplit("/", 1)[1]
    types = {queue["name"]: queue.get("type") for queue in rabbit_manager.get_queues(vhost)}
    event_queues = {name: kind for name, kind in types.items() if name.startswith("evt-")}
    assert event_queues, types
    assert set(event_queues.values()) == {"quorum"}
