"""Spreadsheets as publishers lay them out: title rows, a one- or two-line header, the data,
then footnotes; found in the top rows, then loaded through Arrow into DuckDB.

    book = Workbook(path, member=None)        # .xlsx/.xlsm, .xls, .ods, or one inside a .zip
    rows = book.top_rows("Table 1")           # the first PROBE_ROWS rows, as text
    spot = find_header(rows, score)           # where the header is, and its column names
    book.stage(con, "Table 1", spot.data_row, {0: "sa2_code", 2: "irsd_score"}, "temp.t")
    con.sql(f"SELECT * FROM {text_sql(con, 'temp.t')}")   # every cell as text

The header is looked for in the first :data:`PROBE_ROWS` rows (streamed for an
``.xlsx``: :mod:`pipelines.tables.xlsxrows`).  A two-line header's upper
cells, merged across the columns they head (``Ranking within Australia`` over
``Rank | Decile | Percentile``), are joined to each cell below them; the rows
above the header are the table's title, whose words help name columns that
say too little by themselves (``Score``).  Loading reads the sheet with
fastexcel (Rust: calamine, and Arrow): whole, or for an ``.xlsx`` sheet of more
than 64 MiB of XML a piece at a time (:mod:`pipelines.tables.xlsxstream`), keeps
only the columns asked for, and
drops the rows below the header that are not data: empty rows, and notes,
footnotes and copyright lines (a row with fewer than two cells filled).
Numbers stored as numbers arrive as text written exactly (``4343``, ``583.7``);
numbers stored as text arrive as written.  (A column is staged as numbers or dates
while every piece gives it so, and made text when it is read, :func:`text_sql`:
appending text cost DuckDB three times what appending the numbers did.)
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..context import quote
from ..errors import InputError
from . import files, xlsxrows, xlsxstream

PROBE_ROWS = 60
_NUMBER = re.compile(r"^\s*[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?([eE][-+]?\d+)?\s*%?\s*$")


def _is_number(text: str | None) -> bool:
    return bool(text) and bool(_NUMBER.match(text)) and any(c.isdigit() for c in text)


#: the names fastexcel takes each kind of workbook by
_SUFFIXES = {"xlsx": (".xlsx", ".xlsm"), "xls": (".xls", ".xla"), "ods": (".ods",)}


class Workbook:
    """A spreadsheet file (or a ZIP member that is one), opened on demand."""

    def __init__(self, path: str | Path, member: str | None = None, kind: str | None = None):
        self.path, self.member = Path(path), member
        self.kind = kind or (files.member_kind(path, member)[0] if member
                             else files.file_kind(path))
        self.label = f"{self.path.name}" + (f" (member {member})" if member else "")
        self._reader: Any = None

    def _source(self) -> Any:
        if self.member is not None:
            return files.member_bytes(self.path, self.member)
        if self.path.suffix.lower() not in _SUFFIXES.get(self.kind, ()):
            # named as another kind (an .xls saved as .xlsx): fastexcel goes by a name whose
            # kind it knows, so it is given the bytes, whose kind it tells by themselves
            with files.open_regular(self.path) as f:
                return f.read()
        return str(self.path)

    def _encrypted(self) -> bool:
        """Whether the file is an Office workbook saved with a password (a compound file
        holding the encrypted workbook): fastexcel, taking it for an .xls, says it lacks a
        Workbook stream, or cannot tell its kind."""
        if self.kind != "xls":
            return False
        source = self._source()
        if isinstance(source, str):
            with files.open_regular(self.path) as f:
                source = f.read()
        return _ENCRYPTED in source

    def reader(self) -> Any:
        if self._reader is None:
            try:
                import fastexcel
            except ImportError:   # pragma: no cover - a dependency of ahgd
                raise ImportError("reading spreadsheets needs fastexcel: pip install fastexcel"
                                  ) from None
            with files.open_regular(self.path):   # refuses a link or FIFO before reading
                pass
            source = self._source()   # a disk's error here is the machine's, not the file's
            try:
                self._reader = fastexcel.read_excel(source)
            except (OSError, MemoryError):   # the machine's trouble: never a bad file
                raise
            except Exception as exc:  # fastexcel's own errors: the file is not what it says
                if self._encrypted():
                    raise InputError(f"{self.label} is a workbook encrypted with a password; "
                                     f"{_PASSWORD}") from None
                raise InputError(f"{self.label} is not a spreadsheet fastexcel can read "
                                 f"({_first_line(exc)}); {_fix(exc)}") from None
        return self._reader

    def sheet_names(self) -> list[str]:
        if self.kind == "xlsx":
            with self._stream() as book:
                try:
                    return xlsxrows.sheet_names(book)
                except (KeyError, OSError, SyntaxError, ValueError) as exc:
                    raise InputError(f"{self.label} is not a workbook that can be read "
                                     f"({_first_line(exc)}); {_fix(exc)}") from None
        return list(self.reader().sheet_names)

    def _stream(self) -> Any:
        import io

        if self.member is not None:
            return io.BytesIO(files.member_bytes(self.path, self.member))
        return files.open_regular(self.path)

    def top_rows(self, sheet: str, limit: int = PROBE_ROWS) -> list[list[str | None]]:
        """The sheet's first ``limit`` rows as text, numbered from the sheet's row 1."""
        if self.kind == "xlsx":
            with self._stream() as book:
                try:
                    return xlsxrows.first_rows(book, sheet, limit)
                except (KeyError, OSError, SyntaxError, ValueError) as exc:
                    raise InputError(f"sheet {sheet!r} of {self.label} cannot be read "
                                     f"({_first_line(exc)})") from None
        loaded = self.reader().load_sheet(sheet, header_row=None, n_rows=limit, dtypes="string",
                                          skip_rows=0)
        con = _scratch()
        con.register("top", loaded)
        rows = con.execute("SELECT * FROM top").fetchall()
        offset = [c.absolute_index for c in loaded.available_columns()]
        width = (max(offset) + 1) if offset else 0
        out: list[list[str | None]] = []    # skip_rows=0: from the sheet's row 1
        for row in rows:
            cells: list[str | None] = [None] * width
            for i, v in zip(offset, row):
                cells[i] = v
            out.append(cells)
        return out[:limit]

    def stage(self, con: Any, sheet: str, data_row: int, columns: dict[int, str],
              table: str, *, create: bool) -> int:
        """Load the sheet's rows from ``data_row`` (1-based) into ``table`` (columns named by
        ``columns``: absolute position -> name; numbers and dates staged as such, read them
        as text through :func:`text_sql`), dropping rows that are not data; returns the rows
        dropped.  An ``.xlsx`` sheet larger than
        :func:`~pipelines.tables.xlsxstream.stream_bytes` is read in pieces."""
        wanted = set(columns)
        options = {"schema_sample_rows": None, "dtype_coercion": "coerce",
                   "use_columns": lambda c: c.absolute_index in wanted}
        if self.kind == "xlsx" and self._sheet_size(sheet) > xlsxstream.stream_bytes():
            try:
                return self._stage_pieces(con, sheet, data_row, columns, table, create, options)
            except xlsxstream.Unsupported:
                pass     # written in a way the piece reader does not take: read it whole
        reader = self.reader()
        try:
            loaded = reader.load_sheet(sheet, header_row=None, skip_rows=data_row - 1, **options)
        except Exception as exc:   # (opening the workbook read its list of sheets only)
            problem = self._unreadable(sheet, exc)
            if problem is None:
                raise
            raise problem from None
        try:
            total, kept = loaded.height, _append(con, loaded, columns, table, create)
        finally:
            del loaded
        return total - kept

    def _sheet_size(self, sheet: str) -> int:
        with self._stream() as book:
            try:
                return xlsxstream.sheet_size(book, sheet)
            except (KeyError, OSError, ValueError, zipfile.BadZipFile):
                return 0     # fastexcel says what is wrong with it

    def _stage_pieces(self, con: Any, sheet: str, data_row: int, columns: dict[int, str],
                      table: str, create: bool, options: dict[str, Any]) -> int:
        """:meth:`stage` a piece at a time; a piece the reader does not take (raising
        Unsupported) leaves ``table`` as it was, for the caller to read the sheet whole."""
        count = f"SELECT count(*) FROM {table}"
        before = None if create else con.execute(count).fetchall()[0][0]
        end = data_row - 1      # the sheet's last row with a cell, so far
        kept = 0
        made = False
        # each piece starts with a marker row: a number in a column not loaded
        marker = min(set(range(len(columns) + 1)) - set(columns))
        try:
            with self._stream() as book:
                for piece, loaded in xlsxstream.sheet_pieces(book, sheet, data_row,
                                                             marker_column=marker, **options):
                    # each append commits on its own: DuckDB then compresses the table's
                    # full row groups (MORT staged as text: about 0.5 s of CPU a 120,000
                    # rows, and a third of the memory; appended in one transaction, 1.3 GB
                    # against 0.5 GB; numbers staged as numbers, in source.STAGING, cost
                    # about half that CPU)
                    kept += _append(con, loaded, columns, table, create=create and not made)
                    # a piece of empty rows (its marker row alone) does not move the
                    # end: as in the whole sheet, the rows end at the last with a cell
                    if loaded.height > piece.marked:
                        end = max(end, piece.end(loaded))
                    made = True
                    del loaded
            if not made:
                raise xlsxstream.Unsupported("no rows below the header")   # read it whole
        except xlsxstream.Unsupported:
            if made and create:
                con.execute(f"DROP TABLE IF EXISTS {table}")
            elif made:       # only ever appended to: its rows after ``before`` are this sheet's
                con.execute(f"DELETE FROM {table} WHERE rowid >= {int(before)}")
            raise
        except Exception as exc:   # a piece of the sheet is not what it should be
            problem = self._unreadable(sheet, exc)
            if problem is None:
                raise
            raise problem from None
        return end - (data_row - 1) - kept

    def _unreadable(self, sheet: str, exc: Exception) -> InputError | None:
        """fastexcel's own error ``exc``, met reading ``sheet`` (the sheet is not what a sheet
        should be), as the file's fault; None for any other error."""
        import fastexcel

        if not isinstance(exc, fastexcel.FastExcelError):
            return None
        return InputError(f"sheet {sheet!r} of {self.label} cannot be read "
                          f"({_first_line(exc)}); {_fix(exc)}")


#: fastexcel's dtypes staged as they come (the cells' text is made when the table is read,
#: :func:`text_sql`): appending the numbers of a piece costs a third of appending their text
_TYPED = ("float", "int", "boolean", "date", "datetime")


def _staged(con: Any, table: str) -> dict[str, str | None]:
    """The fastexcel dtype each column of ``table`` holds as it came (None: text)."""
    rel = con.sql(f"SELECT * FROM {table} LIMIT 0")
    return {n: _dtype(str(t)) for n, t in zip(rel.columns, rel.types)}


def _dtype(duck: str) -> str | None:
    if duck.startswith("TIMESTAMP") and "TIME ZONE" not in duck:
        return "datetime"
    return {"DOUBLE": "float", "BIGINT": "int", "BOOLEAN": "boolean", "DATE": "date"}.get(duck)


def text_sql(con: Any, table: str) -> str:
    """A FROM item giving ``table`` (staged by :meth:`Workbook.stage`) with every column as
    the text its cells hold: ``table`` itself when every column is text already."""
    return staged_sql(con, table, numbers=False)[0]


def number_column(name: str) -> str:
    """The name :func:`staged_sql` gives the number of column ``name``."""
    return f"_ahgd_number_{name}"


def staged_sql(con: Any, table: str, *, numbers: bool = True) -> tuple[str, list[str]]:
    """:func:`text_sql`, and (``numbers``) the columns whose every cell was a number in the
    sheet: the FROM item gives each of those a second time as DOUBLE, named
    :func:`number_column` — the value its text parses to, without writing it as text and
    parsing it back (MORT's 1.5 M rows: 1-3 s of CPU less, measured)."""
    typed = _staged(con, table)
    nums = [n for n, d in typed.items() if numbers and d in ("float", "int")]
    if not any(typed.values()):
        return table, []
    cols = [f"{_as_text(quote(n), d) if d else quote(n)} AS {quote(n)}" for n, d in typed.items()]
    cols += [f"CAST({quote(n)} AS DOUBLE) AS {quote(number_column(n))}" for n in nums]
    return f"(SELECT {', '.join(cols)} FROM {table})", nums


def _append(con: Any, loaded: Any, columns: dict[int, str], table: str, create: bool) -> int:
    """Appends the rows of ``loaded`` (a fastexcel sheet, or a piece's rows) that fill two
    or more of ``columns`` (the one, when one is asked for) to ``table`` (created when
    ``create``); the rows kept.  A column is staged in fastexcel's type (numbers, dates:
    :data:`_TYPED`) while every piece gives it that type, else as text (:func:`_as_text`;
    a column staged typed is made text, its cells as :func:`_as_text` writes them, when a
    piece first gives it another type): :func:`text_sql` reads it as text."""
    info = {c.absolute_index: c for c in loaded.selected_columns}
    have = {} if create else _staged(con, table)
    exprs = []
    for pos, name in columns.items():
        c = info.get(pos)
        held = (c.dtype if c and c.dtype in _TYPED else None) if create else have.get(name)
        if c is None:
            expr = "NULL::VARCHAR" if held is None else "NULL"
        elif held is not None and c.dtype == held:
            expr = quote(c.name)
        else:
            if held is not None:    # typed so far; this piece gives it another type: text
                con.execute(f"ALTER TABLE {table} ALTER {quote(name)} TYPE VARCHAR USING "
                            f"{_as_text(quote(name), held)}")
            expr = _as_text(quote(c.name), c.dtype)
        exprs.append(f"{expr} AS {quote(name)}")
    view = f"_ahgd_sheet_{abs(hash((id(loaded), table))) % 10**8}"
    # rows with no cell in the columns read (a piece of a sheet's trailing empty rows, which
    # Excel keeps when they are formatted) come as a table without columns, which DuckDB does
    # not take: they give no row
    empty = not info
    if not empty:
        # a piece comes as Arrow already (xlsxstream.Loaded); a whole sheet as fastexcel's
        con.register(view, loaded.arrow if isinstance(loaded, xlsxstream.Loaded) else loaded)
    try:
        body = f"SELECT {', '.join(exprs)} FROM " + \
            ("(SELECT 1 WHERE false)" if empty else quote(view))
        filled = " + ".join(f"(CASE WHEN {quote(n)} IS NULL THEN 0 ELSE 1 END)"
                            for n in columns.values())
        # (a piece's marker row fills none of ``columns``: left out as any empty row is)
        keep = f"({filled}) >= {2 if len(columns) > 1 else 1}" if columns else "TRUE"
        if create:     # a TEMP table unless named in a database (source.STAGING)
            kind = "TABLE" if "." in table and not table.startswith("temp.") else "TEMP TABLE"
            done = con.execute(f"CREATE OR REPLACE {kind} {table} AS SELECT * FROM "
                               f"({body}) WHERE {keep}")
        else:
            done = con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM ({body}) "
                               f"WHERE {keep}")
        # the rows written, as the statement counts them: not read from the table again
        return done.fetchall()[0][0]
    finally:
        if not empty:
            con.unregister(view)


def _as_text(col: str, dtype: str) -> str:
    """A cell as the text it holds: whole numbers without ``.0``, others exactly."""
    if dtype == "float":
        return (f"CASE WHEN {col} = trunc({col}) AND abs({col}) < 1e15 THEN "
                f"CAST(CAST({col} AS BIGINT) AS VARCHAR) ELSE CAST({col} AS VARCHAR) END")
    if dtype == "datetime":
        return (f"CASE WHEN CAST({col} AS TIME) = TIME '00:00:00' THEN strftime({col}, "
                f"'%Y-%m-%d') ELSE strftime({col}, '%Y-%m-%d %H:%M:%S') END")
    if dtype == "string":
        return f"nullif(trim({col}), '')"
    return f"CAST({col} AS VARCHAR)"


def _scratch() -> Any:
    import duckdb

    return duckdb.connect()


#: the stream an Office workbook saved with a password holds instead of its ZIP (its name
#: in the compound file's directory)
_ENCRYPTED = "EncryptedPackage".encode("utf-16-le")
_PASSWORD = ("no reader can open it without the password: remove the password (in Excel: "
             "File > Info > Protect Workbook > Encrypt with Password, cleared) and save it "
             "again")


def _fix(exc: BaseException) -> str:
    """What to do about a workbook fastexcel refused with ``exc``."""
    if "password" in str(exc).lower():
        return f"it is encrypted with a password, and {_PASSWORD}"
    return "save it again as .xlsx"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


# --------------------------------------------------------------------------- the header


@dataclass
class HeaderSpot:
    """Where a sheet's header is: its rows (1-based), its cells (two lines joined), the
    words of the title rows above it, and the first row below it."""

    rows: list[int]
    cells: list[str]
    title: list[str]

    @property
    def data_row(self) -> int:
        return self.rows[-1] + 1


def header_cells(rows: Sequence[Sequence[str | None]], at: int, lines: int) -> list[str]:
    """The header's cells at 0-based row ``at``: one line, or two with the upper line's
    merged cells carried right over the cells they head."""
    top = list(rows[at])
    if lines == 1:
        return [(c or "").strip() for c in top]
    bottom = list(rows[at + 1])
    width = max(len(top), len(bottom))
    top += [None] * (width - len(top))
    bottom += [None] * (width - len(bottom))
    out, carried = [], None
    for t, b in zip(top, bottom):
        if t:
            carried = t if b else None     # a group heads its own column's sub-label too
        elif not b:
            carried = None
        upper = t or (carried if b else None)
        out.append(" ".join(x.strip() for x in (upper, b) if x and x.strip()))
    return out


def find_header(rows: Sequence[Sequence[str | None]],
                score: Callable[[list[str], list[str]], tuple | None] | None = None,
                given: Sequence[int] | None = None) -> HeaderSpot | None:
    """Where the header of ``rows`` is: ``given`` (1-based rows), else the one- or
    two-line header ``score(cells, title)`` rates highest (None: not a header), else the
    first row of text that the data follows."""
    if given:
        at, lines = given[0] - 1, len(given)
        if at + lines > len(rows):
            return None
        return HeaderSpot(list(given), header_cells(rows, at, lines), _title(rows, at))
    if score is None:
        return _plain_header(rows)
    best: tuple[tuple, HeaderSpot] | None = None
    for at in range(len(rows)):
        if sum(1 for c in rows[at] if c) < 1:
            continue
        for lines in (1, 2):
            if at + lines > len(rows):
                continue
            cells = header_cells(rows, at, lines)
            rated = score(cells, _title(rows, at))
            if rated is None:
                continue
            key = (*rated, -lines, -at)
            if best is None or key > best[0]:
                best = (key, HeaderSpot(list(range(at + 1, at + lines + 1)), cells,
                                        _title(rows, at)))
    return best[1] if best else None


def _plain_header(rows: Sequence[Sequence[str | None]]) -> HeaderSpot | None:
    """The first row of two or more text cells whose next row (or the one after a second
    header line) holds a number; a second line when it fills columns the first leaves."""
    for at, row in enumerate(rows):
        texts = [c for c in row if c]
        if len(texts) < 2 or any(_is_number(c) for c in texts):
            continue
        below = rows[at + 1] if at + 1 < len(rows) else []
        lines = 1
        if below and not any(_is_number(c) for c in below if c) and any(
                b and not (row[i] if i < len(row) else None) for i, b in enumerate(below)):
            lines = 2
        return HeaderSpot(list(range(at + 1, at + lines + 1)), header_cells(rows, at, lines),
                          _title(rows, at))
    return None


def _title(rows: Sequence[Sequence[str | None]], at: int) -> list[str]:
    return [c for row in rows[max(0, at - 10):at] for c in row if c]


__all__ = ["PROBE_ROWS", "Workbook", "HeaderSpot", "find_header", "header_cells",
           "text_sql"]
