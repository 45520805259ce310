"""A large ``.xlsx`` sheet read in bounded pieces: memory does not grow with the sheet.

    for piece, loaded in sheet_pieces(book, "Table 1", data_row, marker_column=7,
                                      use_columns=...):   # not column 7
        ...        # loaded (a Loaded): the marker row, then the piece's rows, in Arrow

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
text).  Rows and cells keep their numbers, so rows and columns are where the
whole sheet has them.  fastexcel lays a sheet out from its row 1 when told how
many rows to skip (a piece of rows 1,000,001 on would cost what a million rows
cost), but from its first row with a cell when not told; so each piece starts
with a marker row: the row before the piece's first, holding one number in a
column the caller does not load (``marker_column``).  Loaded rows then start at
the marker row, exactly, whatever the piece's first rows hold (an earlier
version renumbered each piece's rows from 1 instead: a Python call per row, and
a text cell ending in its own row's number and a quote was changed with them).
fastexcel releases the GIL while it reads, as zlib does while it inflates, so
one thread cuts pieces from the stream and :data:`LOAD_AHEAD` threads read
them while the caller appends the previous one to DuckDB; the caller gets them
in order.
A sheet whose rows do not carry their ``r`` reference first, or whose tags have
a namespace prefix (``<x:row>``), raises :class:`Unsupported` (from the piece
where it is met); the caller then reads the sheet whole.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from . import xlsxrows

#: sheets whose XML is larger than this (uncompressed) are read in pieces
#: (``AHGD_XLSX_STREAM_BYTES`` overrides it, for tests and measurements)
STREAM_BYTES = 64 << 20
#: the XML of one piece (about 24,000 rows of 20 columns; ``AHGD_XLSX_PIECE_BYTES``)
PIECE_BYTES = 16 << 20
#: pieces read at once (in threads: fastexcel releases the GIL)
LOAD_AHEAD = 2
_READ = 4 << 20
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
class Loaded:
    """A piece's rows as fastexcel read them: its columns as fastexcel describes them
    (``selected_columns``: name, ``absolute_index``, ``dtype``), ``height``, and ``arrow``,
    the rows (a pyarrow RecordBatch)."""

    selected_columns: list[Any]
    height: int
    arrow: Any


@dataclass
class Piece:
    """One piece of a sheet: a small workbook holding rows ``first``..``last`` of it (the
    rows after the previous piece's), after a marker row ``first - 1`` when ``marked`` (not
    when ``first`` is the sheet's row 1)."""

    sheet: str
    data: bytes
    first: int
    last: int
    marked: bool

    def load(self, **options: Any) -> Any:
        """The piece's rows through fastexcel: from the marker row (``marked``) or the
        sheet's row 1, to the piece's last row with a cell."""
        import fastexcel

        # "Could not determine dtype ... falling back to string": said of every piece where a
        # column is empty; the cells are read as text anyway
        logging.getLogger("fastexcel.types.dtype").setLevel(logging.ERROR)

        # skip_rows=None: from the first row with a cell, the marker row (not laid out from
        # row 1, as a number of rows to skip would be)
        sheet = fastexcel.read_excel(self.data).load_sheet(
            self.sheet, header_row=None, skip_rows=None if self.marked else 0, **options)
        # made Arrow here, in the reading thread (fastexcel releases the GIL), rather than
        # when DuckDB scans it, on the caller's thread
        return Loaded(sheet.selected_columns, sheet.height, sheet.to_arrow())

    def end(self, loaded: Any) -> int:
        """The sheet's row of the last of ``loaded`` (its last row with a cell; the row
        before the piece when it has none)."""
        return self.first - 1 + loaded.height - (1 if self.marked else 0)


def sheet_pieces(book: BinaryIO, sheet: str, data_row: int, *, size: int | None = None,
                 marker_column: int = 0, ahead: int = LOAD_AHEAD,
                 **options: Any) -> Iterator[tuple[Piece, Any]]:
    """(piece, its rows loaded with fastexcel ``options``) for the rows of ``sheet`` from
    ``data_row`` (1-based) on, in order.  Pieces together give every row from ``data_row``
    to the sheet's last row with a cell, once; a loaded piece starts with its marker row
    (``piece.marked``), a number in column ``marker_column`` (0-based), which ``options``
    must not load.  A thread cuts the pieces from ``book`` and ``ahead`` threads read them
    while the caller uses the one it was given: at most ``ahead`` + 2 pieces are held."""
    pieces = _pieces(book, sheet, data_row, size or piece_bytes(), marker_column)
    ahead = max(1, ahead)
    pool = ThreadPoolExecutor(ahead, thread_name_prefix="ahgd-xlsx-read")
    ready: queue.Queue = queue.Queue(maxsize=ahead)   # (piece, its reading), in order
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def cut() -> None:
        try:
            for piece in pieces:
                if not put((piece, pool.submit(piece.load, **options))):
                    return
                del piece
            put(None)
        except BaseException as exc:  # noqa: BLE001 - raised to the caller, in order
            put(exc)

    cutter = threading.Thread(target=cut, name="ahgd-xlsx-cut", daemon=True)
    cutter.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            piece, reading = item
            del item
            yield piece, reading.result()
            del piece, reading
    finally:
        stop.set()
        cutter.join()
        while not ready.empty():
            item = ready.get_nowait()
            if isinstance(item, tuple):
                item[1].cancel()
        pool.shutdown(wait=True)
        pieces.close()


def _pieces(book: BinaryIO, sheet: str, data_row: int, want: int,
            marker_column: int = 0) -> Iterator[Piece]:
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
        column = column_letters(marker_column).encode()
        with z.open(path) as f:
            for rows, end in _row_runs(f, size):
                last = _number(rows, rows.rfind(b"<row ", 0, end))
                if last <= after:
                    continue
                at = 0
                while _number(rows, at) <= after:     # rows above data_row: the first piece
                    at = rows.find(b"<row ", at + 1, end)
                marker = (b'<row r="%d"><c r="%s%d"><v>0</v></c></row>' % (after, column, after)
                          if after else b"")
                yield Piece(sheet, _workbook(parts, sheets, path, marker,
                                             memoryview(rows)[at:end]),
                            after + 1, last, bool(after))
                after = last


def column_letters(column: int) -> str:
    """The letters of a 0-based column (``0`` -> ``A``, ``26`` -> ``AA``)."""
    out = ""
    column += 1
    while column:
        column, r = divmod(column - 1, 26)
        out = chr(65 + r) + out
    return out


def _number(rows: bytes, at: int) -> int:
    """The number of the row whose ``<row r="`` is at ``at``."""
    try:
        if rows[at:at + 8] != b'<row r="':
            raise ValueError
        return int(rows[at + 8:rows.index(b'"', at + 8)])
    except ValueError:
        raise Unsupported("a row whose first attribute is not its reference") from None


def _workbook(parts: dict[str, bytes], sheets: set[str], path: str, marker: bytes,
              rows: Any) -> bytes:
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
            f.write(marker)
            f.write(rows)
            f.write(b"</sheetData></worksheet>")
    return out.getvalue()


def _row_runs(f: BinaryIO, size: int) -> Iterator[tuple[bytes, int]]:
    """Runs of whole rows of the sheet XML in ``f``, about ``size`` bytes a run: (buffer,
    end), the run being ``buffer[:end]``, starting ``<row r="`` (not copied out of the
    buffer it was read into)."""
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
        buf = b"".join([buf, *more])
        more, held = [], 0
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
            ended = True
        cut = (stop if stop >= 0 else len(buf)) if ended else buf.rfind(b"<row ")
        if cut <= 0:
            continue
        if not buf.startswith(b'<row r="') or buf.find(b"<row>", 0, cut) >= 0:
            raise Unsupported("a row whose first attribute is not its reference")
        yield buf, cut
        buf = buf[cut:] if not ended else b""


__all__ = ["STREAM_BYTES", "PIECE_BYTES", "LOAD_AHEAD", "Unsupported", "Piece", "Loaded",
           "column_letters", "env_size", "sheet_pieces", "sheet_size", "stream_bytes",
           "piece_bytes"]
