"""Bulletin downloads: CSV (UTF-8 with BOM, so Excel shows Chinese) and XLSX, from the JSON bulletin.

Both are built from the same `sections()` rows, so they carry exactly the JSON's numbers. Text that
begins with = + - @ (or a tab / carriage return) is prefixed with an apostrophe: a spreadsheet would
otherwise run it as a formula (formula injection). Numbers are left as numbers.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from typing import Any

from openpyxl import Workbook
from openpyxl.utils import get_column_letter

from services.reporting.exceptions import InvalidInput

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# (section key in the bulletin, sheet title, [(field, column header)])
SECTIONS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("schools", "学校", [
        ("school_id", "学校ID"), ("code", "学校代码"), ("name", "学校"), ("district_name", "片区"),
        ("teachers", "教师数"), ("compliant_teachers", "达标教师"), ("noncompliant_teachers", "未达标教师"),
        ("noncompliant_share", "未达标比例"), ("compliant", "学校达标"), ("online_hours", "网络研修学时"),
        ("offline_hours", "线下研修学时"), ("online_hours_per_teacher", "人均网络学时"), ("activities", "活动数"),
        ("groups", "教研组数"), ("compliant_groups", "达标教研组"),
    ]),
    ("districts", "片区", [
        ("district_id", "片区ID"), ("name", "片区"), ("schools", "学校数"), ("compliant_schools", "达标学校"),
        ("teachers", "教师数"), ("noncompliant_teachers", "未达标教师"), ("noncompliant_share", "未达标比例"),
        ("online_hours", "网络研修学时"), ("offline_hours", "线下研修学时"), ("activities", "活动数"),
    ]),
    ("excellent_teachers", "优秀教师", [
        ("rank", "名次"), ("teacher_id", "教师ID"), ("name", "姓名"), ("staff_number", "工号"),
        ("school_name", "学校"),
        ("online_hours", "网络研修学时"), ("offline_hours", "线下研修学时"), ("activities", "活动数"),
    ]),
    ("excellent_groups", "优秀教研组", [
        ("rank", "名次"), ("group_id", "教研组ID"), ("name", "教研组"), ("school_name", "学校"),
        ("activities", "活动数"),
    ]),
    ("most_improved", "进步最大", [
        ("rank", "名次"), ("school_id", "学校ID"), ("name", "学校"), ("compliant_share_before", "上期达标比例"),
        ("compliant_share_now", "本期达标比例"), ("improvement", "提升"),
    ]),
    ("lagging_schools", "待改进学校", [
        ("school_id", "学校ID"), ("name", "学校"), ("teachers", "教师数"), ("noncompliant_teachers", "未达标教师"),
        ("noncompliant_share", "未达标比例"), ("misses", "未达标项目"),
    ]),
]
SECTION_KEYS = [key for key, _, _ in SECTIONS]


def section_title(section: str) -> str:
    return next(title for key, title, _ in SECTIONS if key == section)


def neutralise(value: Any) -> Any:
    """A cell value safe to open in a spreadsheet: formulas in text become plain text.

    Spreadsheets skip leading blanks, line breaks and invisible characters and read full-width
    ＝＋－＠ as their ASCII forms, so the first character that counts is judged (issue 12, item 16).
    """
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, str):
        first = next((character for character in value if not (
            character.isspace() or unicodedata.category(character) in ("Cc", "Cf", "Zs", "Zl", "Zp")
        )), "")
        if value.startswith(FORMULA_PREFIXES) or unicodedata.normalize("NFKC", first).startswith(FORMULA_PREFIXES):
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
