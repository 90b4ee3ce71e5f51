"""The AsyncAPI document as a validator: which message a routing key carries, and is it valid."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, FormatChecker

from services.common.events import SCHEMA_BASE, event_type_of

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "events" / "asyncapi.yaml"


@cache
def document() -> dict[str, Any]:
    return yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))


def resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document()
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def channel_for(exchange: str, routing_key: str) -> dict[str, Any]:
    """The channel documenting this exchange and routing key (`{kind}` matches one word)."""
    for name, channel in document()["channels"].items():
        binding = resolve(channel["bindings"]["amqp"])
        pattern = "^" + re.sub(r"\\\{[a-z_]+\\\}", "[a-z0-9_]+", re.escape(name)) + "$"
        if binding["exchange"]["name"] == exchange and re.match(pattern, routing_key):
            return channel
    raise AssertionError(f"{exchange} {routing_key} is not in the AsyncAPI document")


def validator(pointer: str) -> Draft7Validator:
    """A validator of the schema at `pointer`, rooted in the whole document so its `$ref`s resolve."""
    return Draft7Validator({**document(), "$ref": pointer}, format_checker=FormatChecker())


def contract_errors(exchange: str, routing_key: str, headers: dict[str, Any], body: bytes) -> list[str]:
    """Every way one published message departs from the document (empty when it conforms)."""
    message_pointer = channel_for(exchange, routing_key)["subscribe"]["message"]["$ref"]
    errors: list[str] = []
    cloud_headers = {key: value for key, value in headers.items() if key.startswith("cloudEvents:")}
    header_errors = validator("#/components/schemas/CloudEventHeaders").iter_errors(cloud_headers)
    errors += [f"headers: {error.message}" for error in header_errors]
    service = exchange.split(".")[0]
    expected_type = f"cn.lianxiao.{service}.{event_type_of(routing_key)}"
    if headers.get("cloudEvents:type") != expected_type:
        errors.append(f"headers: type {headers.get('cloudEvents:type')!r} is not {expected_type!r}")
    schema_name = re.sub(r"(?<!^)(?=[A-Z])", "_", message_pointer.rsplit("/", 1)[1]).lower()
    expected_schema = f"{SCHEMA_BASE}/{service}/{schema_name}/v1.json"
    if headers.get("cloudEvents:dataschema") != expected_schema:
        errors.append(f"headers: dataschema {headers.get('cloudEvents:dataschema')!r} is not {expected_schema!r}")
    payload_errors = validator(f"{message_pointer}/payload").iter_errors(json.loads(body))
    errors += [f"body: {error.json_path}: {error.message}" for error in payload_errors]
    return errors
