"""Reading a CSV file strictly with DuckDB, and saying on which line a bad one goes wrong.

    sql, params = read_csv_sql(["sa2_code", "irsd"], delimiter=",", encoding="utf-8")
    relation = context.sql(f"SELECT * FROM {sql}", params={"path": str(path), **params})
    raise csv_error(exc, input_file=context.input_file) or exc   # names the file and line

DuckDB's own guessing (``read_csv(path)`` with nothing else) reads a ragged
file as one column named ``a,b,c,d``, and a quote that is never closed as no
rows at all.  Here nothing is guessed: the header row gives the columns, the
options give the delimiter, quote and encoding, and every row must have one
value per column.  When DuckDB refuses a row, :func:`csv_error` reads the
file again with Python's ``csv`` module to find the physical line (an editor's
line number, counting the line breaks inside quoted values, which DuckDB does
not) and says what is wrong there, without quoting the line.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Sequence

from .csvheader import WINDOWS_1252_FIX
from .errors import ConfigError, InputError, StageError
from .sqltext import sql_literal

#: Python codec -> DuckDB's name for it
ENCODINGS = {"utf-8": "utf-8", "utf8": "utf-8", "utf-8-sig": "utf-8", "latin-1": "latin-1",
             "latin1": "latin-1", "iso-8859-1": "latin-1"}


def duckdb_encoding(encoding: str) -> str:
    """DuckDB's name for ``encoding`` (utf-8 or latin-1), or ConfigError."""
    name = ENCODINGS.get(str(encoding).lower())
    if name is None:
        raise ConfigError(f"encoding {encoding!r} is not supported; use utf-8 or latin-1")
    return name


def one_char(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
        raise ConfigError(f"{what} {value!r} must be one character, such as ','")
    return value


def read_csv_sql(columns: Sequence[str] | dict[str, str], *, delimiter: str = ",",
                 quote: str = '"', escape: str = '"', encoding: str = "utf-8",
                 compression: str | None = None) -> tuple[str, dict[str, Any]]:
    """``read_csv($path, ...)`` of a file whose header names ``columns``, nothing guessed.

    ``columns`` is the column names in the file's order (all VARCHAR) or a mapping
    of name to DuckDB type.  Bind ``path`` (and the returned parameters) when
    running it.  A row with more or fewer values than the header, or a quote
    that is never closed, makes DuckDB raise: pass that to :func:`csv_error`.
    ``compression="gzip"`` reads a gzip'd file (whatever its name).
    """
    typed = dict(columns) if isinstance(columns, dict) else {c: "VARCHAR" for c in columns}
    q, e = one_char(quote, "quote"), one_char(escape, "escape")
    if compression not in (None, "gzip"):
        raise ConfigError(f"compression {compression!r} is not supported; use gzip or none")
    sql = ("read_csv($path, header = true, auto_detect = false, delim = $delim, "
           f"quote = {sql_literal(q)}, escape = {sql_literal(e)}, columns = $columns, "
           "encoding = $encoding" + (", compression = 'gzip')" if compression else ")"))
    return sql, {"delim": one_char(delimiter, "delimiter"), "columns": typed,
                 "encoding": duckdb_encoding(encoding)}


# --------------------------------------------------------------------------- errors


def csv_error(exc: BaseException, *, input_file: str | Path | None = None,
              path: str | Path | None = None, delimiter: str | None = None,
              quote: str | None = None, escape: str | None = None,
              encoding: str | None = None) -> StageError | None:
    """The error to raise instead of DuckDB's CSV error ``exc``, naming the file and the
    line; None when ``exc`` is not one.

    An :class:`InputError` (the data is bad: not retried, a drop folder's file is
    quarantined) when the file is the run's ``input_file``, or the run has none;
    a :class:`StageError` that is not retried when it is another file the stage
    reads.  Options not given are read from DuckDB's message.
    """
    text = str(exc)
    record = re.search(r"CSV Error on Line: (\d+)", text)
    sniff = re.search(r'Error when sniffing file "([^"]*)"', text)
    # DuckDB names neither the file nor the line of a byte Latin-1 does not take
    latin = "is not latin-1 encoded" in text and (path or input_file)
    if latin:
        path, encoding = path or input_file, "latin-1"
    elif record is None and sniff is None:
        return None
    found = re.search(r"^\s*file = (.*)$", text, re.M)
    path = path or (found.group(1).strip() if found else sniff.group(1) if sniff else None)
    if not path:
        return None
    opts = {"delimiter": delimiter or _option(text, "delimiter") or ",",
            "quote": quote or _option(text, "quote") or '"',
            "escape": escape or _option(text, "escape") or '"',
            "encoding": encoding or ("latin-1" if "latin" in text.lower() else "utf-8")}
    try:
        where = locate_problem(path, record=int(record.group(1)) if record else None, **opts)
    except OSError:
        where = None
    ours = input_file is None or _same_file(path, input_file)
    what = "input file" if ours else "file"
    if where is None and record is None:
        message = (f"{what} {path} is not a CSV file DuckDB can read with delimiter "
                   f"{opts['delimiter']!r} and quote {opts['quote']!r}; check the file, or the "
                   "stage's delimiter and quote options")
    else:
        line, problem = where or (int(record.group(1)), None)
        message = f"{what} {path}, line {line}: {problem or _duckdb_problem(text)}"
    if ours:
        return InputError(message)
    error = StageError(message + " (a file the stage reads, not the run's input file)")
    error.retryable = False
    return error


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _option(text: str, name: str) -> str | None:
    m = re.search(rf"^\s*{name} = (.*?) \((?:Set By User|Auto-Detected)\)", text, re.M)
    if m is None:
        return None
    value = m.group(1).replace("\\t", "\t")
    return value if len(value) == 1 else None


_PROBLEMS = ("Expected Number of Columns", "unterminated quote", "Invalid unicode",
             "Error when converting column", "Maximum line size")


def _duckdb_problem(text: str) -> str:
    """DuckDB's one-line statement of the problem (never the line it quotes)."""
    for line in text.splitlines():
        if any(p in line for p in _PROBLEMS):
            return line.strip().rstrip(".")
    return "DuckDB cannot read this row"


def locate_problem(path: str | Path, *, delimiter: str = ",", quote: str = '"',
                   escape: str = '"', encoding: str = "utf-8", record: int | None = None,
                   ) -> tuple[int, str | None] | None:
    """``(line, what is wrong)`` of the first bad row of the CSV file at ``path``.

    Lines are physical lines, 1 for the header.  A row is bad when it has more
    or fewer values than the header, when a quoted value is never closed, or
    when its bytes are not ``encoding`` text.  With none of those, ``record``
    (DuckDB's row number, which does not count line breaks inside quoted
    values) gives ``(line, None)`` for the row DuckDB named; else None.
    """
    label = duckdb_encoding(encoding)
    with _open_plain(path) as raw:
        text = io.TextIOWrapper(raw, encoding="latin-1", newline="")   # any bytes: structure
        lines = _checked_lines(text, label)
        last = [""]

        def tracked():
            for line in lines:
                last[0] = line
                yield line

        reader = csv.reader(tracked(), delimiter=delimiter, quotechar=quote, strict=True,
                            doublequote=escape == quote,
                            escapechar=None if escape == quote else escape)
        expected, index, start, hit = None, 0, 1, None
        try:
            for row in reader:
                index += 1
                if expected is None:
                    expected = len(row)
                elif row and len(row) != expected:
                    if len(row) < expected and next(lines, None) is None \
                            and not last[0].endswith(("\n", "\r")):
                        return start, (f"this row has {len(row)} value(s), but the header "
                                       f"has {expected} column(s), and the file ends in the "
                                       "middle of it: the file is cut short (taken while it "
                                       "was still being copied, or sent incomplete); send it "
                                       "again whole (into a drop folder: write it under a "
                                       "temporary name such as *.part and rename it when it "
                                       "is complete)")
                    return start, (f"this row has {len(row)} value(s), but the header has "
                                   f"{expected} column(s); every row needs one value per column "
                                   "(check for a missing or extra delimiter "
                                   f"{delimiter!r}, or a value with {delimiter!r} in it that "
                                   f"is not quoted)")
                if record is not None and index == record:
                    hit = start
                start = reader.line_num + 1
        except _NotText as bad:
            if label == "latin-1":    # a control code in Latin-1, refused by DuckDB
                return bad.line, (f"byte 0x{bad.byte:02x} is a control code in Latin-1, "
                                  f"which DuckDB does not read: the file is probably "
                                  f"{WINDOWS_1252_FIX}")
            return bad.line, (f"the line is not {label} text (byte 0x{bad.byte:02x}); save the "
                              f"file as {label}, or set the encoding it is in")
        except csv.Error as exc:
            return start, _quote_problem(str(exc), quote)
    if hit is not None:
        return hit, None
    return None


def _open_plain(path: str | Path) -> Any:
    """The file's bytes, decompressed when it is gzip'd."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    if gzipped:
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _quote_problem(message: str, quote: str) -> str:
    if "expected after" in message:
        return (f"a quoted value ends before the value does (a {quote} in the middle of a "
                f"value); inside a quoted value write {quote} twice: {quote}{quote}")
    return (f"a quoted value that starts on this line is never closed, so the rest of the "
            f"file would be read as one value; close the {quote}, or write a {quote} inside "
            f"a value twice: {quote}{quote}")


class _NotText(Exception):
    def __init__(self, line: int, byte: int):
        super().__init__(line, byte)
        self.line, self.byte = line, byte


#: what DuckDB's Latin-1 refuses: the control codes 0x80-0x9F (Windows-1252's – ’ “ ” € ...)
_C1 = re.compile("[\x80-\x9f]")


def _checked_lines(text: io.TextIOBase, encoding: str):
    """The file's lines; raises _NotText at the first that is not ``encoding``."""
    for number, line in enumerate(text, 1):
        if encoding == "latin-1":
            bad = _C1.search(line)
            if bad:
                raise _NotText(number, ord(bad.group()))
        elif encoding == "utf-8":
            data = line.encode("latin-1")
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _NotText(number, data[exc.start]) from None
        yield line


__all__ = ["read_csv_sql", "csv_error", "locate_problem", "duckdb_encoding"]
