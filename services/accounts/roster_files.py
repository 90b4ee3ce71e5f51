"""Reading roster files (CSV, XLSX) within fixed bounds, so no upload can exhaust memory or time.

An XLSX file is a zip of XML parts; a small one can decompress to gigabytes, declare a sheet of
16 384 × 1 048 576 cells in its `<dimension>`, or carry millions of shared strings. General readers
(openpyxl) size their work from what the file declares, so this reader streams the parts with expat
instead and stops at the first bound crossed: decompressed size (zip headers checked before reading,
and `zipfile` never inflates past the declared size), rows, columns, shared strings, characters and a
deadline. DTDs are refused outright (no entity tricks). The dimension is ignored.

The accounts service runs this reader in a child process (`python -m services.accounts.roster_files`,
see roster_isolation.py).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

from services.accounts.schemas import ROSTER_MAX_FILE_BYTES
from services.common.errors import InvalidInput

MAX_FILE_BYTES = ROSTER_MAX_FILE_BYTES
MAX_ROWS = 5000  # teachers; the header row comes on top
MAX_COLUMNS = 64
MAX_CELL_CHARS = 1000
MAX_TABLE_CHARS = 4_000_000  # every cell's text together
MAX_ROW_ELEMENTS = 100_000  # <row> elements, empty ones included
MAX_SHARED_STRINGS = 40_000  # a full roster needs ~5 000 names and a few hundred other values
MAX_SHARED_STRING_CHARS = 4_000_000
MAX_PART_BYTES = 64 * 1024 * 1024  # one decompressed XML part
MAX_UNZIPPED_BYTES = 128 * 1024 * 1024  # all parts together, as the zip declares them
MAX_ZIP_ENTRIES = 2000
READ_SECONDS = 10.0
CHUNK_BYTES = 64 * 1024

MAIN_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PACKAGE_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
CELL_REFERENCE = re.compile(r"([A-Z]{1,3})(\d+)$")


class Budget:
    """The bounds of one read: a deadline and counters that raise `InvalidInput` when crossed."""

    def __init__(self, seconds: float = READ_SECONDS) -> None:
        self.deadline = time.monotonic() + seconds
        self.table_chars = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise InvalidInput(f"Reading the file took longer than {READ_SECONDS:.0f} s; is it really a roster?")

    def add_cell(self, text: str) -> str:
        if len(text) > MAX_CELL_CHARS:
            raise InvalidInput(f"A cell holds more than {MAX_CELL_CHARS} characters; is it really a roster?")
        self.table_chars += len(text)
        if self.table_chars > MAX_TABLE_CHARS:
            raise InvalidInput(f"The file holds more than {MAX_TABLE_CHARS} characters of text; split it.")
        return text


def too_many_rows() -> InvalidInput:
    return InvalidInput(f"The file has more than {MAX_ROWS} teachers; split it.")


def too_many_columns(column: int) -> InvalidInput:
    return InvalidInput(f"The file uses column {column}; a roster has at most {MAX_COLUMNS} columns.")


def read_table(filename: str, content: bytes, seconds: float = READ_SECONDS) -> list[list[str]]:
    """The cells of the file's first sheet as text, header row first; `InvalidInput` past any bound."""
    if len(content) > MAX_FILE_BYTES:
        raise InvalidInput(f"The file is {len(content)} bytes; at most {MAX_FILE_BYTES} are accepted.")
    lower = filename.lower()
    budget = Budget(seconds)
    if lower.endswith(".xlsx"):
        return read_xlsx(content, budget)
    if lower.endswith(".csv") or lower.endswith(".txt"):
        return read_csv(content, budget)
    raise InvalidInput(f"Unsupported file type {filename!r}: upload a .csv or .xlsx file.")


# --- CSV ------------------------------------------------------------------------------------------------


def read_csv(content: bytes, budget: Budget) -> list[list[str]]:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = content.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:  # pragma: no cover - gb18030 decodes any byte string
        raise InvalidInput("The CSV file is neither UTF-8 nor GB18030 text.")
    if "\x00" in text:
        raise InvalidInput("The CSV file contains NUL bytes; is it really a CSV file?")
    rows: list[list[str]] = []
    try:
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if number % 256 == 0:
                budget.check_time()
            if len(row) > MAX_COLUMNS:
                raise too_many_columns(len(row))
            cells = [budget.add_cell(cell.strip()) for cell in row]
            if any(cells):
                rows.append(cells)
                if len(rows) > MAX_ROWS + 1:
                    raise too_many_rows()
    except csv.Error as error:
        raise InvalidInput(f"The CSV file cannot be read: {error}.") from error
    return rows


# --- XLSX -----------------------------------------------------------------------------------------------


def read_xlsx(content: bytes, budget: Budget) -> list[list[str]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise InvalidInput(f"The .xlsx file cannot be opened: {error}.") from error
    with archive:
        check_zip_sizes(archive)
        sheet_path = first_sheet_path(archive, budget)
        strings = shared_strings(archive, budget)
        return sheet_rows(archive, sheet_path, strings, budget)


def check_zip_sizes(archive: zipfile.ZipFile) -> None:
    entries = archive.infolist()
    if len(entries) > MAX_ZIP_ENTRIES:
        raise InvalidInput(f"The .xlsx file has {len(entries)} parts; a roster needs far fewer.")
    total = 0
    for entry in entries:
        if entry.file_size > MAX_PART_BYTES:
            raise InvalidInput(
                f"The .xlsx part {entry.filename!r} unpacks to {entry.file_size} bytes; at most {MAX_PART_BYTES}."
            )
        total += entry.file_size
    if total > MAX_UNZIPPED_BYTES:
        raise InvalidInput(f"The .xlsx file unpacks to {total} bytes; at most {MAX_UNZIPPED_BYTES} are accepted.")


def parse_part(archive: zipfile.ZipFile, name: str, budget: Budget, handler: Any) -> None:
    """Stream one XML part through expat into `handler` (start/end/text methods)."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True

    def refuse_dtd(*_args: Any) -> None:
        raise InvalidInput("The .xlsx file contains a DTD; spreadsheets do not need one.")

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.StartElementHandler = handler.start
    parser.EndElementHandler = handler.end
    parser.CharacterDataHandler = handler.text
    try:
        with archive.open(name) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                budget.check_time()
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
    except KeyError as error:
        raise InvalidInput(f"The .xlsx file has no part {name!r}.") from error
    except (expat.ExpatError, zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as error:
        raise InvalidInput(f"The .xlsx part {name!r} cannot be read: {error}.") from error


class _Relationships:
    def __init__(self) -> None:
        self.targets: dict[str, str] = {}

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == f"{PACKAGE_REL_NS} Relationship" and "Id" in attributes and len(self.targets) < 1000:
            self.targets[attributes["Id"]] = attributes.get("Target", "")

    def end(self, tag: str) -> None:
        pass

    def text(self, data: str) -> None:
        pass


class _FirstSheet:
    def __init__(self) -> None:
        self.relationship: str | None = None

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == f"{MAIN_NS} sheet" and self.relationship is None:
            self.relationship = attributes.get(f"{REL_NS} id")

    def end(self, tag: str) -> None:
        pass

    def text(self, data: str) -> None:
        pass


def first_sheet_path(archive: zipfile.ZipFile, budget: Budget) -> str:
    names = set(archive.namelist())
    if "xl/workbook.xml" in names and "xl/_rels/workbook.xml.rels" in names:
        sheet = _FirstSheet()
        parse_part(archive, "xl/workbook.xml", budget, sheet)
        relationships = _Relationships()
        parse_part(archive, "xl/_rels/workbook.xml.rels", budget, relationships)
        target = relationships.targets.get(sheet.relationship or "")
        if target:
            path = target.lstrip("/") if target.startswith("/") else posixpath.normpath(f"xl/{target}")
            if path in names:
                return path
    if "xl/worksheets/sheet1.xml" in names:
        return "xl/worksheets/sheet1.xml"
    raise InvalidInput("The .xlsx file has no worksheet.")


class _SharedStrings:
    """`<si>` items: the text of their `<t>` elements, phonetic runs (`<rPh>`) left out."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.items: list[str] = []
        self.parts: list[str] | None = None
        self.in_text = False
        self.phonetic_depth = 0
        self.chars = 0

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == f"{MAIN_NS} si":
            if len(self.items) >= MAX_SHARED_STRINGS:
                raise InvalidInput(f"The .xlsx file has more than {MAX_SHARED_STRINGS} shared strings; split it.")
            self.parts = []
        elif tag == f"{MAIN_NS} rPh":
            self.phonetic_depth += 1
        elif tag == f"{MAIN_NS} t":
            self.in_text = self.parts is not None and self.phonetic_depth == 0

    def end(self, tag: str) -> None:
        if tag == f"{MAIN_NS} si" and self.parts is not None:
            self.items.append("".join(self.parts))
            self.parts = None
        elif tag == f"{MAIN_NS} rPh":
            self.phonetic_depth -= 1
        elif tag == f"{MAIN_NS} t":
            self.in_text = False

    def text(self, data: str) -> None:
        if self.in_text and self.parts is not None:
            self.chars += len(data)
            if self.chars > MAX_SHARED_STRING_CHARS:
                raise InvalidInput(
                    f"The .xlsx file's shared strings exceed {MAX_SHARED_STRING_CHARS} characters; split it."
                )
            self.parts.append(data)


def shared_strings(archive: zipfile.ZipFile, budget: Budget) -> list[str]:
    if "xl/sharedStrings.xml" not in archive.namelist():
        return []
    strings = _SharedStrings(budget)
    parse_part(archive, "xl/sharedStrings.xml", budget, strings)
    return strings.items


def column_number(letters: str) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - 64
    return number


@dataclass
class _Cell:
    column: int
    kind: str
    value: list[str]


class _SheetRows:
    """Rows of `<sheetData>`, each cell placed by its reference (or after the previous one)."""

    def __init__(self, strings: list[str], budget: Budget) -> None:
        self.strings = strings
        self.budget = budget
        self.rows: list[list[str]] = []
        self.row: list[str] | None = None
        self.row_elements = 0
        self.cell: _Cell | None = None
        self.capture = False
        self.inline_depth = 0

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        if tag == f"{MAIN_NS} row":
            self.row_elements += 1
            if self.row_elements > MAX_ROW_ELEMENTS:
                raise InvalidInput(f"The sheet has more than {MAX_ROW_ELEMENTS} rows; a roster has at most {MAX_ROWS}.")
            self.row = []
        elif tag == f"{MAIN_NS} c" and self.row is not None:
            column = len(self.row) + 1
            match = CELL_REFERENCE.match(attributes.get("r", ""))
            if match:
                column = column_number(match.group(1))
            if column > MAX_COLUMNS:
                raise too_many_columns(column)
            self.cell = _Cell(column, attributes.get("t", "n"), [])
        elif tag == f"{MAIN_NS} v" and self.cell is not None:
            self.capture = True
        elif tag == f"{MAIN_NS} is":
            self.inline_depth += 1
        elif tag == f"{MAIN_NS} t" and self.cell is not None and self.inline_depth:
            self.capture = True

    def end(self, tag: str) -> None:
        if tag in (f"{MAIN_NS} v", f"{MAIN_NS} t"):
            self.capture = False
        elif tag == f"{MAIN_NS} is":
            self.inline_depth -= 1
        elif tag == f"{MAIN_NS} c" and self.cell is not None and self.row is not None:
            text = self.budget.add_cell(self.cell_text(self.cell))
            if text:
                self.row.extend([""] * (self.cell.column - 1 - len(self.row)))
                if self.cell.column - 1 < len(self.row):
                    self.row[self.cell.column - 1] = text
                else:
                    self.row.append(text)
            self.cell = None
        elif tag == f"{MAIN_NS} row" and self.row is not None:
            if any(self.row):
                self.rows.append(self.row)
                if len(self.rows) > MAX_ROWS + 1:
                    raise too_many_rows()
            self.row = None

    def text(self, data: str) -> None:
        if self.capture and self.cell is not None:
            if sum(map(len, self.cell.value)) + len(data) > MAX_CELL_CHARS:
                raise InvalidInput(f"A cell holds more than {MAX_CELL_CHARS} characters; is it really a roster?")
            self.cell.value.append(data)

    def cell_text(self, cell: _Cell) -> str:
        raw = "".join(cell.value).strip()
        if cell.kind == "s":
            try:
                return self.strings[int(raw)].strip()
            except (ValueError, IndexError) as error:
                raise InvalidInput(f"The .xlsx file refers to a shared string {raw!r} it does not have.") from error
        if cell.kind == "n" and raw:
            return number_text(raw)
        if cell.kind == "b":
            return "TRUE" if raw == "1" else "FALSE"
        return raw


def number_text(raw: str) -> str:
    """Staff numbers typed as numbers in Excel come back as `1003`, not `1003.0`."""
    try:
        number = float(raw)
    except ValueError:
        return raw
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return raw


def sheet_rows(archive: zipfile.ZipFile, path: str, strings: list[str], budget: Budget) -> list[list[str]]:
    rows = _SheetRows(strings, budget)
    parse_part(archive, path, budget, rows)
    return rows.rows


# --- the child process (see services/accounts/roster_isolation.py) -------------------------------------


def limit_this_process(memory_bytes: int, cpu_seconds: int) -> None:
    """The child limits itself first thing (a `preexec_fn` could deadlock a threaded parent after fork)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


def _child_main(arguments: list[str]) -> int:
    limit_this_process(int(arguments[1]), int(arguments[2]))
    content = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    try:
        answer: dict[str, Any] = {"rows": read_table(arguments[0], content)}
    except InvalidInput as error:
        answer = {"error": error.detail}
    except MemoryError:
        answer = {"error": "The file needs more memory to read than a roster may; is it really a roster?"}
    sys.stdout.write(json.dumps(answer, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
