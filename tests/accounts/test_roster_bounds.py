"""Hostile roster files (issue 12, item 2): every one is refused or read within fixed memory and time.

The files are the attacks of the issue, built small: a sheet whose `<dimension>` claims every cell of
Excel, a million rows, hundreds of thousands of shared strings, a zip bomb, an XML entity expansion.
"""

from __future__ import annotations

import io
import subprocess
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator

import pytest
from openpyxl import Workbook

from services.accounts import roster_isolation
from services.accounts.exceptions import InvalidInput
from services.accounts.roster_files import MAX_FILE_BYTES, read_table
from services.accounts.roster_isolation import ImportSlots, read_table_isolated
from services.common.errors import ServiceUnavailable

NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
# Well under what the issue measured (22 s, 723 MB); a bounded reader needs a fraction of it.
SECONDS = 3.0
PEAK_BYTES = 40 * 1024 * 1024


def template() -> dict[str, bytes]:
    """The parts of a real one-sheet workbook written by openpyxl (so any reader accepts the package)."""
    workbook = Workbook()
    workbook.active.append(["工号", "姓名"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    with zipfile.ZipFile(buffer) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def xlsx(sheet_data: Iterator[bytes] | bytes, shared: list[str] | None = None, dimension: str = "A1:B2",
         prolog: bytes = b"") -> bytes:
    parts = template()
    body = sheet_data if isinstance(sheet_data, bytes) else b"".join(sheet_data)
    parts["xl/worksheets/sheet1.xml"] = (
        prolog + f'<worksheet {NS}><dimension ref="{dimension}"/><sheetData>'.encode() + body
        + b"</sheetData></worksheet>"
    )
    if shared is not None:
        items = "".join(f"<si><t>{text}</t></si>" for text in shared)
        parts["xl/sharedStrings.xml"] = f'<sst {NS} count="{len(shared)}">{items}</sst>'.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, content in parts.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def inline_row(number: int, *values: str) -> bytes:
    cells = "".join(f'<c r="{chr(65 + index)}{number}" t="inlineStr"><is><t>{value}</t></is></c>'
                    for index, value in enumerate(values))
    return f'<row r="{number}">{cells}</row>'.encode()


def attempt(read: Callable[[], object]) -> object:
    try:
        return read()
    except InvalidInput as error:
        return error


def measured(read: Callable[[], object]) -> tuple[object, float, int]:
    """The outcome, its time (measured alone: tracemalloc slows Python down) and its peak of allocations."""
    started = time.perf_counter()
    outcome = attempt(read)
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        attempt(read)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, elapsed, peak


def test_a_dimension_claiming_every_cell_costs_nothing():
    content = xlsx(inline_row(1, "工号", "姓名") + inline_row(2, "H1", "林一"), dimension="A1:XFD1048576")
    assert len(content) < 10_000
    table, elapsed, peak = measured(lambda: read_table("r.xlsx", content))
    assert table == [["工号", "姓名"], ["H1", "林一"]]
    assert elapsed < SECONDS and peak < PEAK_BYTES, (elapsed, peak)


def test_a_far_away_cell_is_refused_not_padded():
    content = xlsx(inline_row(1, "工号", "姓名") + b'<row r="1048576"><c r="XFD1048576"><v>1</v></c></row>',
                   dimension="A1:XFD1048576")
    refused, elapsed, peak = measured(lambda: read_table("r.xlsx", content))
    assert isinstance(refused, InvalidInput) and "column 16384" in refused.detail
    assert elapsed < SECONDS and peak < PEAK_BYTES


def test_a_million_rows_stop_at_the_row_limit():
    # The same row a million times, without references: ~300 KB compressed, as in the issue.
    content = xlsx(b'<row><c t="s"><v>0</v></c><c t="s"><v>0</v></c></row>' * 1_000_000, shared=["名"])
    assert len(content) < MAX_FILE_BYTES
    refused, elapsed, peak = measured(lambda: read_table("r.xlsx", content))
    assert isinstance(refused, InvalidInput) and "more than 5000 teachers" in refused.detail
    assert elapsed < SECONDS and peak < PEAK_BYTES, (elapsed, peak)


def test_a_million_empty_rows_are_refused():
    content = xlsx(b"".join(f'<row r="{n}"/>'.encode() for n in range(1, 1_000_001)))
    refused, elapsed, peak = measured(lambda: read_table("r.xlsx", content))
    assert isinstance(refused, InvalidInput) and "rows" in refused.detail
    assert elapsed < SECONDS and peak < PEAK_BYTES


def test_hundreds_of_thousands_of_shared_strings_are_refused():
    content = xlsx(inline_row(1, "工号", "姓名"), shared=[f"s{n}" for n in range(600_000)])
    assert len(content) < MAX_FILE_BYTES
    refused, elapsed, peak = measured(lambda: read_table("r.xlsx", content))
    assert isinstance(refused, InvalidInput) and "shared strings" in refused.detail
    assert elapsed < SECONDS and peak < PEAK_BYTES, (elapsed, peak)


def test_a_zip_bomb_is_refused_from_its_headers():
    parts = template()
    parts["xl/worksheets/sheet1.xml"] = b" " * (300 * 1024 * 1024)  # deflates to ~300 KB
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in parts.items():
            archive.writestr(name, content)
    refused, elapsed, peak = measured(lambda: read_table("r.xlsx", buffer.getvalue()))
    assert isinstance(refused, InvalidInput) and "unpacks to" in refused.detail
    assert elapsed < SECONDS and peak < PEAK_BYTES


def test_xml_entities_are_refused():
    prolog = b'<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY a "aaaaaaaaaa">]>'
    content = xlsx(inline_row(1, "&a;", "姓名"), prolog=prolog)
    with pytest.raises(InvalidInput, match="DTD"):
        read_table("r.xlsx", content)


def test_a_csv_with_a_million_columns_is_refused():
    refused, elapsed, peak = measured(lambda: read_table("r.csv", b"," * 1_000_000))
    assert isinstance(refused, InvalidInput) and "column" in refused.detail
    assert elapsed < SECONDS and peak < PEAK_BYTES


def test_a_csv_with_a_million_rows_stops_at_the_row_limit():
    content = b"\n".join(b"H%d,n" % number for number in range(400_000))
    refused, _elapsed, peak = measured(lambda: read_table("r.csv", content))
    assert isinstance(refused, InvalidInput) and "more than 5000 teachers" in refused.detail
    assert peak < PEAK_BYTES


def test_rich_text_numbers_and_gaps_read_as_excel_shows_them():
    shared = '<si><r><t>林</t></r><r><t>一</t></r><rPh><t>リン</t></rPh></si>'
    parts = xlsx('<row r="1"><c r="A1" t="inlineStr"><is><t>工号</t></is></c>'
                 '<c r="C1" t="inlineStr"><is><t>姓名</t></is></c></row>'
                 '<row r="2"><c r="A2"><v>1003</v></c><c r="C2" t="s"><v>0</v></c></row>'.encode())
    with zipfile.ZipFile(io.BytesIO(parts)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["xl/sharedStrings.xml"] = f'<sst {NS}>{shared}</sst>'.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    assert read_table("r.xlsx", buffer.getvalue()) == [["工号", "", "姓名"], ["1003", "", "林一"]]


def test_the_child_process_reads_like_the_parent():
    content = xlsx(inline_row(1, "工号", "姓名") + inline_row(2, "H1", "林一"))
    assert read_table_isolated("r.xlsx", content) == read_table("r.xlsx", content)
    with pytest.raises(InvalidInput, match="Unsupported file type"):
        read_table_isolated("r.pdf", b"%PDF")


def test_a_child_killed_by_its_limits_is_a_clear_refusal():
    def killed(*_args: object, **_kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess([], -9, b"", b"MemoryError")

    with pytest.raises(InvalidInput, match="memory and time limits"):
        read_table_isolated("r.xlsx", b"PK", run=killed)


def test_a_child_past_its_memory_limit_dies_and_accounts_answers(monkeypatch):
    monkeypatch.setattr(roster_isolation, "CHILD_MEMORY_BYTES", 8 * 1024 * 1024)  # too little for Python itself
    with pytest.raises(InvalidInput, match="memory and time limits"):
        read_table_isolated("r.csv", b"a,b\n1,2\n")


def test_roster_imports_beyond_the_waiting_room_are_told_to_retry():
    slots = ImportSlots(running=1, waiting=1)
    slots.__enter__()
    slots.holders += 1  # a second import waiting for the slot
    with pytest.raises(ServiceUnavailable, match="retry"):
        slots.__enter__()
