"""Grafana dashboards: Grafana's own dashboard JSON schema, layout and datasource checks, every PromQL
expression parsed by promtool, provisioning files consistent with the compose mounts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .ops_helpers import DASHBOARD_FILES, REPO, promtool_parse

# Generated from the TypeScript types of npm @grafana/schema 13.2.3 (raw/dashboard/x/types.gen.d.ts,
# type Dashboard) with ts-json-schema-generator 2.4.0: `make -f mk/ops.mk grafana-schema`.
SCHEMA = json.loads((Path(__file__).with_name("grafana_dashboard.schema.json")).read_text())
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
DATASOURCE_UID = "lianxiao-prometheus"


def dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, json.loads(path.read_text())) for path in DASHBOARD_FILES]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]
    exprs += [variable["query"]["query"] for variable in dashboard.get("templating", {}).get("list", [])
              if variable.get("type") == "query"]
    return exprs


def as_promql(expr: str) -> str:
    """What Grafana sends: variables interpolated (a regex for multi-value ones), label_values() is not PromQL."""
    match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr)
    if match:
        return match.group(1)
    return expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace('"$service"', '".*"') \
        .replace('"$session"', '".*"')


def test_the_three_dashboards_exist() -> None:
    assert {name for name, _ in dashboards()} == {
        "lianxiao-platform.json", "lianxiao-relay.json", "lianxiao-activities.json"
    }


@pytest.mark.parametrize("name", [path.name for path in DASHBOARD_FILES])
def test_dashboard_validates_against_grafana_schema(name: str) -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / name).read_text())
    errors = [f"{list(error.absolute_path)}: {error.message}"
              for error in jsonschema.Draft7Validator(SCHEMA).iter_errors(dashboard)]
    assert errors == []


def test_schema_rejects_a_broken_dashboard() -> None:
    # The schema must be strict enough to catch a typo, or the test above proves nothing.
    _name, dashboard = dashboards()[0]
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][1]["gridPos"] = {"w": 12, "x": 0, "y": 0}
    broken["panels"][1]["titel"] = "typo"
    messages = [message for error in jsonschema.Draft7Validator(SCHEMA).iter_errors(broken)
                for message in flatten(error)]
    assert any("'h' is a required property" in message for message in messages)
    assert any("titel" in message for message in messages)


def flatten(error: jsonschema.ValidationError) -> list[str]:
    # Panels are "Panel or RowPanel" (anyOf): the useful messages sit in the error's context.
    return [error.message, *(message for child in error.context or [] for message in flatten(child))]


@pytest.mark.parametrize("name", [path.name for path in DASHBOARD_FILES])
def test_dashboard_structure(name: str) -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / name).read_text())
    assert dashboard["uid"] == name.removesuffix(".json") and dashboard["title"]
    all_panels = panels(dashboard)
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    variables = {variable["name"] for variable in dashboard.get("templating", {}).get("list", [])}
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID and target["expr"].strip()
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__range", "__interval"}
            assert used <= variables, f"undefined variables {used - variables} in {panel['title']!r}"


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = {f"{name}:{index}": as_promql(expr) for name, dashboard in dashboards()
             for index, expr in enumerate(expressions(dashboard))}
    assert len(exprs) > 40
    result = promtool_parse(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parse_check_can_fail(tmp_path: Path) -> None:
    result = promtool_parse({"bad": "sum by (service (rate(x[5m]))"}, tmp_path)
    assert result.returncode != 0


def test_provisioning_points_at_the_dashboards_and_datasource() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [source["uid"] for source in datasources] == [DATASOURCE_UID]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "lianxiao.yml").read_text())["providers"]
    dashboards_path = providers[0]["options"]["path"]
    compose = yaml.safe_load((REPO / "deploy" / "compose.grafana.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    # The provider's path must be where compose mounts deploy/grafana/dashboards.
    assert f"./grafana/dashboards:{dashboards_path}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
