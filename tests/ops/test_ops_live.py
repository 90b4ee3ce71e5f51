"""A real Prometheus on 127.0.0.1 scraping a real relay data plane (and, with the broker, the real
services): the link-target alert fires when a branch is starved and resolves when it recovers; every
metric the rules and dashboards use is exported by something that runs.

Prometheus gets a config generated from deploy/prometheus/prometheus.yml (same jobs, the live ports,
1 s scrape and evaluation) and the repository's rule files with every expression unchanged; only the
`for:` durations are shortened to FOR_SECONDS so the test stays under a minute.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.classroom_relay.dataplane.admission import issue_token
from tests.ingest.ingest_harness import exported_metric_names as ingest_metric_names
from tests.recorder.recorder_harness import exported_metric_names as recorder_metric_names
from tests.relay.relay_harness import DataPlane, start_dataplane, stop_process

from .ops_helpers import (
    DASHBOARD_FILES,
    PROMETHEUS_DIR,
    RULE_FILES,
    MediaFeeder,
    all_rules,
    exposed_names,
    free_tcp_port,
    http_get,
    metric_names,
    recorded_names,
    registry_names,
    scrape_sessions,
    start_media_feeder,
    wait_until,
)

SECRET = "ops-test-secret"
SOURCE_BYTES_PER_SECOND = 1.5e6  # 12 Mbit/s from the master classroom
STARVED_BUDGET = 5e5  # 4 Mbit/s: below the 10 Mbit/s target
HEALTHY_BUDGET = 2.5e6  # 20 Mbit/s: the whole 12 Mbit/s stream fits
FOR_SECONDS = 3
ALERT = "RelayReceivingClassroomBelowTarget"
# Series Prometheus itself creates; everything else must come from a scrape.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}


class Relay:
    def __init__(self, plane: DataPlane, feeder: MediaFeeder) -> None:
        self.plane = plane
        self.feeder = feeder

    def set_budget(self, classroom: str, sink: int, budget: float) -> None:
        self.plane.call("set_branch", session="s1", classroom=classroom,
                           address=["127.0.0.1", self.feeder.sink_ports[sink]], budget_bytes_per_second=budget)


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    """A data plane with session s1: master m sends 12 Mbit/s, branch b1 starved, branch b2 healthy."""
    plane = start_dataplane()
    feeder: MediaFeeder | None = None
    try:
        plane.call("set_secrets", secrets=[SECRET])
        plane.call("set_session", session="s1", master="m")
        feeder = start_media_feeder(plane.media_port, SOURCE_BYTES_PER_SECOND, sinks=2)
        running = Relay(plane, feeder)
        running.set_budget("b1", 0, STARVED_BUDGET)
        running.set_budget("b2", 1, HEALTHY_BUDGET)
        token = issue_token(SECRET.encode(), "s1", "m", 600)
        plane.call("register_sender", session="s1", classroom="m", token=token,
                      address=["127.0.0.1", feeder.sender_port])
        yield running
    finally:
        if feeder is not None:
            feeder.stop()
        errors = plane.stop()
        assert "Traceback" not in errors, errors


def send_rates(relay: Relay) -> dict[str, float]:
    return {labels["classroom"]: value
            for labels, value in scrape_sessions(relay.plane.metrics(), "lianxiao_relay_send_rate_bytes_per_second")}


def test_control_feeds_the_branches_at_their_budgets(relay: Relay) -> None:
    # Precondition of the alert test: b1 really is held below target, b2 gets the whole stream.
    def settled() -> dict[str, float] | None:
        rates = send_rates(relay)
        ok = rates.get("b1", 0) > 0.8 * STARVED_BUDGET and rates.get("b2", 0) > 0.9 * SOURCE_BYTES_PER_SECOND
        return rates if ok else None

    rates = wait_until(settled, timeout=10, what="both branches forwarding")
    assert rates["b1"] < 1.25e6 <= rates["b2"]


# ----------------------------------------------------------------------------- a real Prometheus
def shortened_rules(workdir: Path) -> list[Path]:
    paths = []
    for source in RULE_FILES:
        document = yaml.safe_load(source.read_text())
        for group in document["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = f"{FOR_SECONDS}s"
        target = workdir / "rules" / source.name
        target.parent.mkdir(exist_ok=True)
        target.write_text(yaml.safe_dump(document, sort_keys=False))
        paths.append(target)
    return paths


def live_config(workdir: Path, targets: dict[str, list[str]]) -> Path:
    """The repository's config with this machine's targets, 1 s intervals and the test's rule files."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(path) for path in shortened_rules(workdir)]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job.pop("scrape_interval", None)
            job["static_configs"] = [{"targets": targets[job["job_name"]]}]
            jobs.append(job)
    assert {job["job_name"] for job in jobs} == set(targets), "a target job is missing from the repo's config"
    config["scrape_configs"] = jobs
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path



class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        reply = json.loads(http_get(f"{self.base}/api/v1/{path}{query}"))
        assert reply["status"] == "success", reply
        return reply["data"]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [alert for alert in self.api("alerts")["alerts"] if alert["labels"]["alertname"] == name]


@pytest.fixture
def prometheus(relay: Relay, tmp_path: Path) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: make system-deps (apt-get install prometheus)")
    port = free_tcp_port()
    config = live_config(tmp_path, {"lianxiao-relay-dataplane": [f"127.0.0.1:{relay.plane.metrics_port}"]})
    process = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        server = Prometheus(port)
        wait_until(lambda: http_get(f"{server.base}/-/ready"), timeout=15, what="Prometheus ready")
        yield server
    finally:
        stop_process(process, grace=10)


def test_link_target_alert_fires_for_a_starved_branch_and_resolves(relay: Relay, prometheus: Prometheus) -> None:
    started = time.monotonic()
    relay.set_budget("b1", 0, STARVED_BUDGET)

    def firing() -> list[dict[str, Any]]:
        return [alert for alert in prometheus.alerts(ALERT) if alert["state"] == "firing"]

    alerts = wait_until(firing, timeout=25, what=f"{ALERT} firing")
    # Only the starved branch; the healthy one of the same live session stays quiet.
    assert [(alert["labels"]["session"], alert["labels"]["classroom"]) for alert in alerts] == [("s1", "b1")]
    assert float(alerts[0]["value"]) < 1.25e6
    scraped = prometheus.api("targets")["activeTargets"]
    assert [target["health"] for target in scraped] == ["up"]

    relay.set_budget("b1", 0, HEALTHY_BUDGET)  # the branch's link recovers
    wait_until(lambda: prometheus.alerts(ALERT) == [], timeout=20, what=f"{ALERT} resolved")
    rate = prometheus.api("query", query='lianxiao_relay:send_rate_bytes_per_second:live{classroom="b1"}')["result"]
    assert float(rate[0]["value"][1]) >= 1.25e6
    assert time.monotonic() - started < 50


# ----------------------------------------------------------------------------- metrics in use exist
def used_metric_names() -> dict[str, set[str]]:
    """metric name -> where it is used (rule or dashboard)."""
    used: dict[str, set[str]] = {}
    for rule in all_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(rule.get("alert") or rule.get("record"))
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text())
        exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
        exprs += [variable["query"]["query"] for variable in dashboard.get("templating", {}).get("list", [])]
        for expr in exprs:
            # label_values(metric, label) is Grafana's, not PromQL: only its metric counts.
            for name in metric_names(re.sub(r"label_values\((\w+),\s*\w+\)", r"\1", expr)):
                used.setdefault(name, set()).add(path.name)
    return used


def rabbitmq_names() -> set[str]:
    return exposed_names(http_get("http://127.0.0.1:15692/metrics/per-object", timeout=10))


def gateway_names() -> set[str]:
    """The gateway's metric descriptors (its /metrics under gunicorn only lists families with samples)."""
    from services.gateway.metrics import GatewayMetrics

    return registry_names(GatewayMetrics().registry)


@pytest.mark.integration
def test_every_metric_used_by_rules_and_dashboards_is_exported(
    relay: Relay, runner_factory: Any, service_config: dict[str, Any]
) -> None:
    from services.common.metrics import ServiceMetrics, registry_for
    from services.platform import SERVICES

    # The relay refuses to start without join secrets unless told this is a development setup.
    config = {**service_config, "RELAY_ALLOW_DEV_SECRET": "1"}
    runner = runner_factory(config, *(service.load_class() for service in SERVICES))
    runner.start()
    exported: set[str] = set(PROMETHEUS_OWN)
    for container in runner.containers:
        # A live scrape of each service's own metrics port, plus its registry's descriptors for the
        # labelled metrics that have no sample yet (no call, no event so far).
        metrics = next(ext for ext in container.extensions if isinstance(ext, ServiceMetrics))
        page = http_get(f"http://127.0.0.1:{metrics.port}/metrics")
        assert "lianxiao_service_up" in page
        exported |= exposed_names(page) | registry_names(registry_for(container))
    wait_until(lambda: send_rates(relay).get("b2", 0) > 0, timeout=10, what="media through the relay")
    exported |= exposed_names(relay.plane.metrics())
    exported |= rabbitmq_names()
    exported |= gateway_names()
    exported |= ingest_metric_names()
    exported |= recorder_metric_names()

    missing = {name: sorted(places) for name, places in used_metric_names().items()
               if name not in exported and name not in recorded_names()}
    assert missing == {}


def test_metric_check_would_notice_a_missing_metric() -> None:
    used = used_metric_names()
    assert "lianxiao_relay_send_rate_bytes_per_second" in used and "lianxiao_outbox_backlog_events" in used
    assert "lianxiao_relay_sender_live" in used
    assert "no_such_metric" not in used
