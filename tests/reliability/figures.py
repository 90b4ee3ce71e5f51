"""The one table `make test-reliability` prints: each scenario adds a row, the conftest prints them all."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    scenario: str
    sent: int | str = "-"
    accepted: int | str = "-"
    stored: int | str = "-"
    reported: int | str = "-"
    lost: int | str = "-"
    duplicated: int | str = "-"
    outage: str = "-"  # time without service (or without media), as measured
    notes: str = ""


ROWS: list[Row] = []
COLUMNS = ("scenario", "sent", "accepted", "stored", "reported", "lost", "duplicated", "outage", "notes")


def record(row: Row) -> Row:
    ROWS.append(row)
    return row


def render(rows: list[Row]) -> list[str]:
    cells = [[str(getattr(row, column)) for column in COLUMNS] for row in rows]
    widths = [max(len(column), *(len(line[index]) for line in cells)) for index, column in enumerate(COLUMNS)]
    widths[-1] = len(COLUMNS[-1])  # notes run free to the right

    def line(values: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)) + " |"

    return [line(COLUMNS), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *map(line, cells)]


@dataclass
class HostileRow:
    """One line of the "hostile tenant" table (issue 12): an attack by one tenant and what still holds."""

    item: str
    attack: str
    bound: str  # memory, latency, what was refused — as measured
    other_tenant: str  # the effect on the other tenant, as measured


HOSTILE_ROWS: list[HostileRow] = []
HOSTILE_COLUMNS = ("item", "attack", "bound that held", "effect on the other tenant")


def record_hostile(row: HostileRow) -> HostileRow:
    HOSTILE_ROWS.append(row)
    return row


def render_hostile(rows: list[HostileRow]) -> list[str]:
    lines = ["| " + " | ".join(HOSTILE_COLUMNS) + " |", "|" + "|".join("---" for _ in HOSTILE_COLUMNS) + "|"]
    for row in sorted(rows, key=lambda row: int(row.item.split()[0])):
        lines.append(f"| {row.item} | {row.attack} | {row.bound} | {row.other_tenant} |")
    return lines
