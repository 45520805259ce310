"""A large ``.xlsx`` sheet read in bounded pieces: memory does not grow with the sheet.

    for piece, loaded in sheet_pieces(book, "Table 1", data_row, use_columns=...):
        ...        # loaded: a fastexcel sheet (Arrow) of the rows after piece.skip_rows

fastexcel (calamine) holds a whole sheet before it gives a row: a sheet of a
million rows by 19 columns took 1.6 GB.  Parsing the cells outside calamine is
far slower (a parser in DuckDB string functions measured 3-5x slower than
calamine; per-cell Python slower still).  So the sheet's XML is read from the
ZIP as a stream and cut between rows (byte searches for ``<row ``: no Python
work per row or cell) into pieces of about :data:`PIECE_BYTES`; each piece
becomes a small workbook in memory (the original's other parts: shared
strings, styles; the sheet holding only the piece's rows; stored, not
compressed), which fastexcel reads as it reads any workbook.  Cells therefore
come out as they do from the whole sheet (types, dates, shared strings, rich
text), and one piece is held at a time.  Rows keep their
numbers, so rows and columns are where the whole sheet has them.  A sheet whose
rows do not carry their ``r`` reference first, or whose tags have a namespace
prefix (``<x:row>``), raises :class:`Unsupported` (from the piece where it is
met); the caller then reads the sheet whole.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from . import xlsxrows

#: sheets whose XML is larger than this (uncompressed) are read in pieces
#: (``AHGD_XLSX_STREAM_BYTES`` overrides it, for tests and measurements)
STREAM_BYTES = 64 << 20
#: the XML of one piece (about 48,000 rows of 19 columns; ``AHGD_XLSX_PIECE_BYTES``)
PIECE_BYTES = 32 << 20
_READ = 4 << 20
#: pieces after this row are numbered from 1 (see :func:`_renumbered`)
RENUMBER_AFTER = 65536
_EMPTY = (b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet xmlns="'
          b'http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData/></worksheet>')


class Unsupported(Exception):
    """The sheet is written in a way the piece reader does not take."""


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def env_size(name: str, default: int) -> int:
    """A size in bytes from the environment variable ``name`` (``67108864``, ``64M``, ``4G``),
    else ``default``.  A value that is no size is said once in the log, naming the variable
    and what it takes, and the default is used: a typo there must not fail a run."""
    value = os.environ.get(name, "").strip().upper().removesuffix("B").removesuffix("I")
    if not value:
        return default
    digits, unit = (value[:-1], value[-1]) if value[-1] in _UNITS else (value, "")
    if digits.isdigit():
        return int(digits) * _UNITS[unit]
    logging.getLogger(__name__).warning(
        "%s=%r is not a size; using %d bytes. Give bytes (67108864) or a size with K, M or G "
        "(64M, 4G), or unset it (this is the environment's setting, not the file's fault)",
        name, os.environ.get(name), default)
    return default


def stream_bytes() -> int:
    """The size above which a sheet is read in pieces (see :data:`STREAM_BYTES`;
    ``AHGD_XLSX_STREAM_BYTES`` overrides it)."""
    return env_size("AHGD_XLSX_STREAM_BYTES", STREAM_BYTES)


def piece_bytes() -> int:
    """The XML of one piece (see :data:`PIECE_BYTES`; ``AHGD_XLSX_PIECE_BYTES`` overrides)."""
    return max(1, env_size("AHGD_XLSX_PIECE_BYTES", PIECE_BYTES))


def sheet_size(book: BinaryIO, sheet: str) -> int:
    """The uncompressed size of ``sheet``'s XML (0 when the workbook has no such sheet)."""
    with zipfile.ZipFile(book) as z:
        path = dict(xlsxrows._sheets(z)).get(sheet)
        try:
            return z.getinfo(path).file_size if path else 0
        except KeyError:
            return 0


@dataclass
class Piece:
    """One piece of a sheet: a small workbook holding rows ``first``..``last`` of it."""

    sheet: str
    data: bytes
    first: int
    last: int
    skip_rows: int   # rows of the piece's own sheet before its rows (0: numbered from 1)

    def load(self, **options: Any) -> Any:
        import fastexcel

        # "Could not determine dtype ... falling back to string": said of every piece where a
        # column is empty; the cells are read as text anyway
        logging.getLogger("fastexcel.types.dtype").setLevel(logging.ERROR)

        return fastexcel.read_excel(self.data).load_sheet(
            self.sheet, header_row=None, skip_rows=self.skip_rows, **options)


def sheet_pieces(book: BinaryIO, sheet: str, data_row: int, *, size: int | None = None,
                 **options: Any) -> Iterator[tuple[Piece, Any]]:
    """(piece, its rows loaded with fastexcel ``options``) for the rows of ``sheet`` from
    ``data_row`` (1-based) on, in order.  Pieces together give every row from ``data_row``
    to the sheet's last row with a cell, once.  (Loading the next piece in a thread while
    the caller appends this one was measured: no faster on 2 cores.)"""
    pieces = _pieces(book, sheet, data_row, size or piece_bytes())
    try:
        for piece in pieces:
            yield piece, piece.load(**options)
    finally:
        pieces.close()


def _pieces(book: BinaryIO, sheet: str, data_row: int, want: int) -> Iterator[Piece]:
    with zipfile.ZipFile(book) as z:
        paths = dict(xlsxrows._sheets(z))
        path = paths.get(sheet)
        if not path or path not in z.namelist():
            raise Unsupported(f"no sheet {sheet!r}")
        sheets = set(paths.values())
        # the other parts, once: they go into every piece (stored, not compressed)
        parts = {i.filename: z.read(i) for i in z.infolist()
                 if i.filename not in sheets and not i.is_dir()}
        # a large shared-string table is parsed with every piece: make pieces larger then
        size = max(want, 4 * len(parts.get("xl/sharedStrings.xml", b"")))
        after = data_row - 1       # the sheet's rows before the next piece's
        with z.open(path) as f:
            for rows in _row_runs(f, size):
                last = _number(rows, rows.rfind(b"<row "))
                if last <= after:
                    continue
                at = 0
                while _number(rows, at) <= after:     # rows above data_row: the first piece
                    at = rows.find(b"<row ", at + 1)
                first = _number(rows, at)
                if after > RENUMBER_AFTER:
                    # fastexcel lays out a sheet from its row 1: a piece of rows 1,000,001 on
                    # would cost what a million rows cost; numbered from 1 it costs its own
                    body, skip = _renumbered(rows[at:], after), 0
                else:
                    body, skip = memoryview(rows)[at:], after
                yield Piece(sheet, _workbook(parts, sheets, path, body), first, last, skip)
                after = last


def _renumbered(rows: bytes, offset: int) -> bytes:
    """``rows`` (starting ``<row r="``) with ``offset`` taken off each row's number, in the
    row and in its cells' references (``C1000005"`` -> ``C5"``): each row's number followed
    by ``"`` is replaced in that row.  The numbers are over :data:`RENUMBER_AFTER`, more
    than any style index (``s="..."``) may be; only a text cell ending in its own row's
    number and a ``"`` (``1000005"``) would be changed with them."""
    out = []
    for row in rows.split(b"<row ")[1:]:
        n = row[3:row.index(b'"', 3)]
        out.append(row.replace(n + b'"', b"%d\"" % (int(n) - offset)))
    return b"<row " + b"<row ".join(out)


def _number(rows: bytes, at: int) -> int:
    """The number of the row whose ``<row r="`` is at ``at``."""
    try:
        if rows[at:at + 8] != b'<row r="':
            raise ValueError
        return int(rows[at + 8:rows.index(b'"', at + 8)])
    except ValueError:
        raise Unsupported("a row whose first attribute is not its reference") from None


def _workbook(parts: dict[str, bytes], sheets: set[str], path: str, rows: Any) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in parts.items():
            z.writestr(name, data)
        for name in sheets:
            if name != path:
                z.writestr(name, _EMPTY)
        with z.open(path, "w", force_zip64=True) as f:
            f.write(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<worksheet '
                    b'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
                    b'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/'
                    b'relationships"><sheetData>')
            f.write(rows)
            f.write(b"</sheetData></worksheet>")
    return out.getvalue()


def _row_runs(f: BinaryIO, size: int) -> Iterator[bytes]:
    """Runs of whole rows of the sheet XML in ``f``, each starting ``<row r="``, about
    ``size`` bytes a run."""
    buf = b""
    more: list[bytes] = []
    held = 0
    started = ended = False
    while not ended:
        data = f.read(min(_READ, size))
        ended = not data
        more.append(data)
        held += len(data)
        if not ended and held < (size if started else min(_READ, size)):
            continue
        buf, more, held = buf + b"".join(more), [], 0
        if not started:
            at = buf.find(b"<sheetData")
            if at < 0:
                if ended or len(buf) > (8 << 20):
                    raise Unsupported("no <sheetData> element (a namespace prefix?)")
                continue
            first = buf.find(b"<row", at)
            if first < 0 and not ended:
                continue
            buf, started = buf[first if first >= 0 else at:], True
        stop = buf.find(b"</sheetData>")
        if stop >= 0:
            buf, ended = buf[:stop], True
        cut = len(buf) if ended else buf.rfind(b"<row ")
        if cut <= 0:
            continue
        head, buf = buf[:cut], buf[cut:]
        if not head.startswith(b'<row r="') or b"<row>" in head:
            raise Unsupported("a row whose first attribute is not its reference")
        yield head


__all__ = ["STREAM_BYTES", "PIECE_BYTES", "Unsupported", "Piece", "env_size", "sheet_pieces",
           "sheet_size", "stream_bytes", "piece_bytes"]
