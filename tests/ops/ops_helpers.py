"""Helpers of the operations tests: repository paths, promtool, PromQL metric names, a media sender
driving a real relay data plane, free ports. A plain module (not a conftest) so tests import it."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
DASHBOARD_FILES = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
READY_PATTERN = re.compile(r"relay-dataplane ready media=([\d.]+):(\d+) rtcp=(\d+) control=(\d+)")


def run(command: list[str], timeout: float = 60, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def wait_until(predicate: Any, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, ValueError) as error:  # not up yet
            last_error = error
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


# ----------------------------------------------------------------------------- rules and PromQL
def load_rule_groups(paths: Iterable[Path] = RULE_FILES) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in paths:
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rule_groups() for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in all_rules() if "record" in rule}


_PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan", "le", "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR_BODY = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_NUMBER_UNIT = re.compile(r"^\d")


def metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names an expression selects; function names and labels excluded.

    A deliberately small tokenizer: strings, label matchers, ranges and label lists are removed
    first, then every identifier that is not followed by "(" and is not a keyword is a metric name.
    """
    text = _GRAFANA_VARIABLE.sub("1", expr)
    text = _STRING.sub('""', text)
    text = _SELECTOR_BODY.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub(" ", text)
    names = {match for match in _IDENTIFIER.findall(text) if match.lower() not in _PROMQL_KEYWORDS}
    return {name for name in names if not _NUMBER_UNIT.match(name)}


def promtool_parse(expressions: dict[str, str], workdir: Path) -> subprocess.CompletedProcess:
    """Parse PromQL with promtool: every expression becomes a recording rule of a throwaway file."""
    rules = [{"record": f"parse_check:{index}", "expr": expr} for index, expr in enumerate(expressions.values())]
    path = workdir / "parse_check.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "parse-check", "rules": rules}]}))
    return run(["promtool", "check", "rules", str(path)])


# ----------------------------------------------------------------------------- exposition formats
def exposed_names(exposition: str) -> set[str]:
    """Sample names a /metrics page declares (from # TYPE lines, so families without samples count)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _hash, _type, name, kind = line.split(maxsplit=3)
            names |= sample_names(name, kind)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def sample_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}


def registry_names(registry: Any) -> set[str]:
    """Sample names of a prometheus_client registry, from its collectors' descriptors: a labelled
    metric that has not been used yet has no samples but still describes itself here."""
    names: set[str] = set()
    for family in registry.collect():
        names |= sample_names(family.name, family.type)
    return names


# ----------------------------------------------------------------------------- the relay data plane
# The data plane itself is started with tests/relay/relay_harness.py (start_dataplane, DataPlane).


@dataclass
class MediaFeeder:
    """media_feeder.py in its own process (no eventlet there): one paced RTP sender and N sinks."""

    process: subprocess.Popen
    sender_port: int
    sink_ports: list[int]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)


def start_media_feeder(relay_port: int, bytes_per_second: float, sinks: int) -> MediaFeeder:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("media_feeder.py")), "--relay-port", str(relay_port),
         "--bytes-per-second", str(bytes_per_second), "--sinks", str(sinks)],
        stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError("media_feeder.py did not start")
    ports = json.loads(line)
    return MediaFeeder(process, ports["sender_port"], ports["sink_ports"])


def scrape_sessions(exposition: str, metric: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of `metric` on a /metrics page."""
    pattern = re.compile(rf"^{re.escape(metric)}\{{(.*)\}} (\S+)$")
    for line in exposition.splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1)))
            yield labels, float(match.group(2))
