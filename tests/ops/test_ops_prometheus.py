"""promtool on the repository's Prometheus files: config, rules, rule unit tests, and the Kubernetes
PrometheusRule being the very same rules."""

from __future__ import annotations

import re

import yaml

from .ops_helpers import PROMETHEUS_DIR, REPO, RULE_FILES, all_rules, load_rule_groups, metric_names, run

UNIT_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


def test_promtool_check_config_finds_every_rule_file() -> None:
    result = run(["promtool", "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    # rule_files are relative to the config: the repo's rules must actually be found and checked.
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_scrape_config_covers_every_component() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    components = {
        target_group["labels"]["component"]
        for job in jobs.values()
        for target_group in job.get("static_configs", [])
        if "component" in target_group.get("labels", {})
    }
    assert components == {
        "accounts", "activities", "reporting", "classroom_relay", "gateway", "relay_dataplane", "relay_ingest",
        "relay_recorder", "rabbitmq", "resources",
    }
    # Queue-level RabbitMQ metrics (queue/vhost labels) only come from the per-object endpoint.
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"


def test_promtool_check_rules() -> None:
    result = run(["promtool", "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    assert UNIT_TEST_FILES, "no promtool unit tests"
    result = run(["promtool", "test", "rules", *(str(path.relative_to(PROMETHEUS_DIR)) for path in UNIT_TEST_FILES)],
                 cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in all_rules() if "alert" in rule}
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"


def test_alerts_carry_severity_and_text() -> None:
    for rule in all_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_recording_rules_follow_the_naming_convention_and_are_used() -> None:
    # level:metric:operations; a recording rule nobody reads is dead weight.
    used = set()
    for rule in all_rules():
        used |= metric_names(rule["expr"])
    for path in sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json")):
        used |= set(re.findall(r"[a-z_]+:[a-z_0-9]+:[a-z_0-9]+", path.read_text()))
    for rule in all_rules():
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:[a-z_0-9]+:[a-z_0-9]+", rule["record"]), rule["record"]
            assert rule["record"] in used, f"{rule['record']} is recorded but never used"


def test_kubernetes_prometheusrule_holds_the_same_rules() -> None:
    result = run([str(REPO / ".venv" / "bin" / "python"), "deploy/prometheus/generate_k8s_rules.py", "--check"])
    assert result.returncode == 0, result.stderr
    generated = yaml.safe_load((REPO / "k8s" / "base" / "monitoring" / "prometheusrule.yaml").read_text())
    assert generated["spec"]["groups"] == load_rule_groups()


def test_metric_name_extraction() -> None:
    # The metric checks below rely on this small tokenizer; pin its behaviour.
    expr = (
        'histogram_quantile(0.99, sum by (service, le) (rate(lianxiao_x_bucket{a=~"b|c"}[5m]))) > 1 '
        'and on (instance) group_left () lianxiao:y:rate1m offset 5m or vector(0) unless up{job="$job"}'
    )
    assert metric_names(expr) == {"lianxiao_x_bucket", "lianxiao:y:rate1m", "up"}
