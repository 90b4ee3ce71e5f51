"""Typed settings from the environment: every variable the platform reads is declared once, here or in
its part's own settings module, with its type, default and meaning.

    WORKERS = setting("MAX_WORKERS", int, 10, "nameko workers per service")
    WORKERS.get()          # the environment's value, parsed, or the default
    WORKERS.get(config)    # a nameko config value first (tests pass settings this way), then the environment

An empty value counts as unset. A value that does not parse stops the process with the variable's name
(`ValueError: MAX_WORKERS='ten': ...`) rather than running with a surprise. A name containing
`<SERVICE>` is one variable per service (`<SERVICE>_DATABASE_URL` → `ACCOUNTS_DATABASE_URL`).

README's configuration table is generated from these declarations (`python -m services.platform
settings-table`); tests/architecture/test_settings.py keeps the two equal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

SERVICE_PLACEHOLDER = "<SERVICE>"
_DECLARED: dict[str, Setting[Any]] = {}


def boolean(text: str) -> bool:
    """`1/true/yes/on` or `0/false/no/off`, any case."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected one of 1/true/yes/on or 0/false/no/off")


@dataclass(frozen=True)
class Setting(Generic[T]):
    name: str
    parse: Callable[[str], T]
    default: T
    meaning: str
    # How the documentation shows the default when the value alone would not say it (e.g. "required").
    default_text: str | None = None
    # The module that declared it (for listing settings by part, whatever the import order).
    module: str = ""

    def key(self, service: str | None = None) -> str:
        if SERVICE_PLACEHOLDER in self.name:
            if service is None:
                raise ValueError(f"{self.name} is one variable per service: name the service")
            return self.name.replace(SERVICE_PLACEHOLDER, service.upper())
        return self.name

    def raw(self, config: Mapping[str, Any] | None = None, service: str | None = None) -> str | None:
        """The unparsed value: nameko config first, then the environment; None when unset or empty."""
        key = self.key(service)
        for source in (config or {}, os.environ):
            value = source.get(key)
            if value is not None and str(value) != "":
                return str(value)
        return None

    def get(self, config: Mapping[str, Any] | None = None, service: str | None = None) -> T:
        text = self.raw(config, service)
        if text is None:
            return self.default
        try:
            return self.parse(text)
        except ValueError as error:
            raise ValueError(f"{self.key(service)}={text!r}: {error}") from None

    def documented_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return "—" if self.default is None else f"`{self.default}`"


def setting(
    name: str, parse: Callable[[str], T], default: T, meaning: str, default_text: str | None = None
) -> Setting[T]:
    """Declare one environment variable; a name may be declared only once in the whole platform."""
    if name in _DECLARED:
        raise ValueError(f"{name} is declared twice")
    declared = Setting(name, parse, default, meaning, default_text, sys._getframe(1).f_globals["__name__"])
    _DECLARED[name] = declared
    return declared


def declared() -> list[Setting[Any]]:
    """Every setting declared by the modules imported so far, in declaration order."""
    return list(_DECLARED.values())


def markdown_table(settings: list[Setting[Any]]) -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{item.name}` | {item.documented_default()} | {item.meaning} |" for item in settings]
    return "\n".join(lines) + "\n"
