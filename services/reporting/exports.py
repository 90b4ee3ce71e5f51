"""Bulletin downloads: CSV (UTF-8 with BOM, so Excel shows Chinese) and XLSX, from the JSON bulletin.

Both are built from the same `sections()` rows, so they carry exactly the JSON's numbers. Text that
begins with = + - @ (or a tab / carriage return) is prefixed with an apostrophe: a spreadsheet would
otherwise run it as a formula (formula injection). Numbers are left as numbers.
"""

from __future__ import annotations

import base64
import csv
import io
from typing import Any

from openpyxl import Workbook
from openpyxl.utils import get_column_letter

from services.reporting.exceptions import InvalidInput
from services.reporting.schemas import SECTION_KEYS, SECTIONS

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def section_title(section: str) -> str:
    return next(title for key, title, _ in SECTIONS if key == section)


def neutralise(value: Any) -> Any:
    """A cell value safe to open in a spreadsheet: formulas in text become plain text."""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def rows(bulletin: dict[str, Any], section: str) -> tuple[list[str], list[list[Any]]]:
    for key, _title, columns in SECTIONS:
        if key == section:
            header = [label for _, label in columns]
            return header, [[neutralise(line.get(name)) for name, _ in columns] for line in bulletin[key]]
    raise InvalidInput(f"Unknown section {section!r}; one of {', '.join(SECTION_KEYS)}.",
                       {"section": ["Unknown section."]})


def to_csv(bulletin: dict[str, Any], section: str = "schools") -> bytes:
    """One section as CSV, UTF-8 with a byte order mark (Excel otherwise guesses the encoding)."""
    header, body = rows(bulletin, section)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(body)
    return buffer.getvalue().encode("utf-8-sig")


def _width(value: Any) -> int:
    text = str(value if value is not None else "")
    return sum(2 if ord(char) > 0x2E80 else 1 for char in text)  # CJK characters are double width


def to_xlsx(bulletin: dict[str, Any]) -> bytes:
    """Every section as a sheet: a bold header row, frozen below it, columns sized to their content."""
    from openpyxl.styles import Font

    workbook = Workbook()
    workbook.remove(workbook.active)
    for key, title, _columns in SECTIONS:
        header, body = rows(bulletin, key)
        sheet = workbook.create_sheet(title)
        sheet.append(header)
        for cell in sheet[1]:
            cell.font = Font(bold=True)
        for line in body:
            sheet.append(line)
        sheet.freeze_panes = "A2"
        for index, name in enumerate(header, start=1):
            widest = max([_width(name)] + [_width(line[index - 1]) for line in body[:500]])
            sheet.column_dimensions[get_column_letter(index)].width = min(60, widest + 2)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def download(report: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """A loaded `ExportIn` of a bulletin as `{"filename", "display_filename", "content_type", "content_base64"}`
    (RPC bodies are JSON); `display_filename` is the Chinese title a person sees when saving it."""
    if request["format"] == "csv":
        content, content_type = to_csv(report, request["section"]), "text/csv; charset=utf-8"
        filename = f"bulletin-{request['key']}-{request['section']}.csv"
        display = f"{report['title']}-{section_title(request['section'])}.csv"
    else:
        content, content_type, filename = to_xlsx(report), XLSX_TYPE, f"bulletin-{request['key']}.xlsx"
        display = f"{report['title']}.xlsx"
    return {"filename": filename, "display_filename": display, "content_type": content_type,
            "content_base64": base64.b64encode(content).decode("ascii")}
