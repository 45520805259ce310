"""The first rows of an ``.xlsx`` sheet, streamed: a header check never parses a whole sheet.

    names = sheet_names(book)                 # book: an open binary file of the .xlsx
    rows = first_rows(book, "Table 1", 60)    # [[cell text or None, ...], ...] from row 1

A spreadsheet reader (fastexcel, calamine) loads a whole sheet before it
gives its first row: seconds and hundreds of MB for a large one.  A header
check needs the top of the sheet only, so this reads the sheet's XML from the
ZIP as a stream (the standard library's ``zipfile`` and ``iterparse``) and stops
after ``limit`` rows or ``max_bytes`` of XML, whichever comes first; shared
strings are read only as far as the rows read refer to.  Rows are numbered as
the sheet numbers them (a row missing from the XML is an empty row here), and
so are columns (``C5`` is the third cell of the fifth row), so positions agree
with the reader that later loads the sheet.
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from typing import Any, BinaryIO, Iterator
from xml.etree.ElementTree import iterparse

from ..errors import InputError

_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_REF = re.compile(r"([A-Z]+)(\d+)")
MAX_BYTES = 32 << 20


def sheet_names(book: BinaryIO) -> list[str]:
    with zipfile.ZipFile(book) as z:
        return [name for name, _ in _sheets(z)]


def _sheets(z: zipfile.ZipFile) -> list[tuple[str, str]]:
    """(name, path in the ZIP) of each sheet, in the workbook's order."""
    rels = {}
    with z.open("xl/_rels/workbook.xml.rels") as f:
        for _, el in iterparse(f):
            if el.tag == f"{_PKG_REL}Relationship":
                target = el.get("Target", "")
                rels[el.get("Id")] = (target.lstrip("/") if target.startswith("/")
                                      else posixpath.normpath(posixpath.join("xl", target)))
    out = []
    with z.open("xl/workbook.xml") as f:
        for _, el in iterparse(f):
            if el.tag == f"{_MAIN}sheet":
                out.append((el.get("name", ""), rels.get(el.get(f"{_REL}id"), "")))
    return out


class _Bounded:
    """A file object that stops (raising _TooMuch) after ``limit`` bytes."""

    def __init__(self, f: BinaryIO, limit: int):
        self.f, self.left = f, limit

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise _TooMuch
        data = self.f.read(min(n if n >= 0 else self.left, self.left))
        self.left -= len(data)
        return data


class _TooMuch(Exception):
    pass


def first_rows(book: BinaryIO, sheet: str, limit: int, *,
               max_bytes: int = MAX_BYTES) -> list[list[str | None]]:
    """The first ``limit`` rows of ``sheet`` as text (None for an empty cell)."""
    with zipfile.ZipFile(book) as z:
        paths = dict(_sheets(z))
        if sheet not in paths:
            raise InputError(f"the workbook has no sheet {sheet!r}")
        raw: dict[int, dict[int, tuple[str, str]]] = {}
        try:
            with z.open(paths[sheet]) as f:
                for number, cells in _rows(_Bounded(f, max_bytes)):
                    if number > limit:
                        break
                    raw[number] = cells
        except _TooMuch:
            pass   # the rows read so far are all the check gets
        wanted = {int(v) for cells in raw.values() for t, v in cells.values()
                  if t == "s" and v.isdigit()}
        shared = _shared_strings(z, max(wanted) if wanted else -1, max_bytes)
    width = max((max(c) + 1 for c in raw.values() if c), default=0)
    rows: list[list[str | None]] = []
    for number in range(1, min(limit, max(raw, default=0)) + 1):
        cells = raw.get(number, {})
        row: list[str | None] = [None] * width
        for col, (kind, value) in cells.items():
            row[col] = _text(kind, value, shared)
        rows.append(row)
    return rows


def _rows(f: Any) -> Iterator[tuple[int, dict[int, tuple[str, str]]]]:
    number = 0
    cells: dict[int, tuple[str, str]] = {}
    for event, el in iterparse(f, events=("start", "end")):
        tag = el.tag
        if event == "start":
            if tag == f"{_MAIN}row":
                number = int(el.get("r") or number + 1)
                cells = {}
            continue
        if tag == f"{_MAIN}c":
            ref = _REF.match(el.get("r") or "")
            col = _column(ref.group(1)) if ref else len(cells)
            kind = el.get("t", "n")
            if kind == "inlineStr":
                value = "".join(t.text or "" for t in el.iter(f"{_MAIN}t"))
            else:
                v = el.find(f"{_MAIN}v")
                value = v.text if v is not None and v.text is not None else ""
            if value != "":
                cells[col] = (kind, value)
            el.clear()
        elif tag == f"{_MAIN}row":
            yield number, cells
            el.clear()


def _column(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - 64
    return n - 1


def _shared_strings(z: zipfile.ZipFile, last: int, max_bytes: int) -> list[str]:
    if last < 0 or "xl/sharedStrings.xml" not in z.namelist():
        return []
    out: list[str] = []
    try:
        with z.open("xl/sharedStrings.xml") as f:
            for _, el in iterparse(_Bounded(f, max_bytes)):
                if el.tag == f"{_MAIN}si":
                    # rich text is several runs; phonetic guides (rPh) are not the text
                    out.append("".join(t.text or "" for r in el if r.tag != f"{_MAIN}rPh"
                                       for t in ([r] if r.tag == f"{_MAIN}t"
                                                 else r.iter(f"{_MAIN}t"))))
                    el.clear()
                    if len(out) > last:
                        break
    except _TooMuch:
        pass
    return out


def _text(kind: str, value: str, shared: list[str]) -> str | None:
    if kind == "s":
        i = int(value) if value.isdigit() else -1
        return shared[i] if 0 <= i < len(shared) else None
    if kind == "b":
        return "true" if value == "1" else "false"
    if kind == "n":
        try:
            number = float(value)
        except ValueError:
            return value
        return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)
    return value


__all__ = ["sheet_names", "first_rows", "MAX_BYTES"]
