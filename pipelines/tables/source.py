"""A tabular file as it comes, identified from its top and read into DuckDB as text.

    manifest = identify(path, columns, sheet=None, member=None, encoding="auto")
    source = read_source(con, manifest, scratch_dir)    # source.sql: a FROM item
    con.sql(f"SELECT sa2_code, irsd_score FROM {source.sql}", params=source.params)

:func:`identify` reads only what it must: a CSV's header (from its first MiB,
decompressed when the file is gzip'd or a ZIP member), or the top rows of each
sheet of a spreadsheet.  ``columns`` (an object with ``match(header, title)``,
see :class:`HeaderFit`) says which cell gives what; the result is a plain mapping
(JSON: it rides in the event log) whose ``columns`` lists each position's name
**in the file's order**.  :func:`read_source` reads the whole table, every
column VARCHAR: a CSV with DuckDB's strict ``read_csv``, a ZIP member after
copying it out, spreadsheet sheets through Arrow into tables of an in-memory
database (:data:`STAGING`; numbers and dates kept as such there, and read as
the text the cells hold; sheets that give the same columns one after the other,
sheets that give different columns joined on the key).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from ..context import quote
from ..csvfile import csv_error, read_csv_sql
from ..csvheader import HEADER_LIMIT
from ..errors import InputError
from . import files
from .sheets import PROBE_ROWS, Workbook, find_header, staged_sql, text_sql

UNUSED = "_unused_"
#: the encoding of Excel's "CSV (Comma delimited)" on Windows, which DuckDB does not read: a
#: CSV in it is read from a copy made UTF-8 (:func:`~pipelines.tables.files.transcode`)
WINDOWS_1252 = "windows-1252"
#: text DuckDB is not given as it is: read from a copy made UTF-8 (the Python codec); UTF-16
#: (a byte-order mark first) is what database and statistics tools' "Unicode" CSVs are
TRANSCODED = {WINDOWS_1252: "cp1252", "utf-16": "utf-16"}
_SPELLED = {"cp1252": "Windows-1252", "utf-16": "UTF-16"}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
#: the in-memory database sheets are staged in (attached with COMPRESS on the stage's DuckDB
#: instance, detached with the attempt): DuckDB compresses its numbers (ALP) as row groups
#: fill, which it does not in TEMP tables (MORT's 1.5 M rows: 25 MB against 180 MB a half)
STAGING = "_ahgd_sheets"
#: an input check reads a spreadsheet it cannot stream (.xls, .ods, one in a ZIP) only up to
#: this size; a larger one is checked by the run's extract stage
CHECK_WHOLE_LIMIT = 64 << 20


@dataclass
class HeaderFit:
    """How a header fits: a name per position (None: not read), what is wrong, and a
    rating (higher is better) for telling a header row from the rows around it."""

    names: list[str | None]
    problem: str | None = None
    score: tuple = ()
    notes: dict[str, Any] = field(default_factory=dict)


class Columns(Protocol):
    """What a table must give (``what``: "an ABS SEIFA by SA2 table"); ``key``: the columns
    that join sheets giving different columns; ``match``: a header's fit; an optional
    ``rate(header, title)`` gives ``match(...).score`` cheaper (for finding a header row)."""

    what: str
    key: Sequence[str]

    def match(self, header: list[str], title: list[str]) -> HeaderFit: ...


def identify(path: str | Path, columns: Columns, *, sheet: Any = None, member: str | None = None,
             header_row: Any = None, encoding: str = "auto", delimiter: str = ",",
             all_sheets: bool | str = True, whole_file: bool = True) -> dict[str, Any]:
    """The manifest of the table at ``path`` (see the module's docstring); InputError when
    it does not fit ``columns``.  Of a workbook, ``all_sheets`` reads every sheet that fits
    (True), the first (False), or those giving the first's columns (``"same"``: a table
    continued over sheets, as a sheet holds at most 1,048,576 rows).  ``whole_file=False``
    (an input check) reads a bounded prefix only; a spreadsheet it could only read whole,
    larger than :data:`CHECK_WHOLE_LIMIT`, is not checked (``"unchecked": True``)."""
    path = Path(path)
    kind = files.file_kind(path)
    label = path.name
    size = None
    if kind == "zip":
        member = files.zip_member(path, member)
        kind, size = files.member_kind(path, member)
        label = f"{path.name} (member {member})"
    elif member is not None:
        raise InputError(f"{path.name} is not a ZIP file, but the extract stage's member option "
                         f"names {member!r}; drop the option or send the ZIP file")
    manifest: dict[str, Any] = {"path": str(path), "member": member}
    if kind in files.SPREADSHEETS:
        if not whole_file and _too_big_to_check(path, kind, size):
            # an .xls/.ods is parsed whole, a zipped .xlsx unzipped whole: the run checks it
            return {**manifest, "format": "spreadsheet", "kind": kind, "unchecked": True}
        sheets = _identify_sheets(Workbook(path, member, kind), columns, label, sheet,
                                  header_row, all_sheets)
        return {**manifest, "format": "spreadsheet", "kind": kind, "sheets": sheets}
    if sheet is not None:
        raise InputError(f"{label} is a CSV file, but the extract stage's sheet option names "
                         f"{sheet!r}; drop the option or send the spreadsheet")
    if header_row not in (None, 1, [1]):
        raise InputError(f"{label} is a CSV file, whose header is its first line, but the "
                         f"extract stage's header_row option says {header_row!r} (the "
                         "option is for spreadsheets); delete the lines above the header, "
                         "or send the spreadsheet")
    compression = "gzip" if kind == "gzip" or _gzipped_member(path, member) else None
    # the file's first bytes, read once: for markup, the header and a title above it
    data, whole = files.csv_prefix(path, member, HEADER_LIMIT)
    markup = _markup(data[:4096])
    if markup:
        raise InputError(f"{label} is {markup}, not a CSV file or a workbook (a web site's "
                         "'Export to Excel' often sends one under an .xls name); open it in "
                         "Excel and save it as .xlsx or as CSV UTF-8, then send that")
    header, codec, guessed = _csv_header(path, member, label, data, whole, encoding, delimiter,
                                         whole_file)
    title = _title_line(data[:64 << 10], header, codec, delimiter)
    if title:
        raise InputError(f"{label}: {title}")
    found = columns.match(header, [])
    if found.problem:
        raise InputError(f"{label} {found.problem}")
    names = [n or f"{UNUSED}{i}" for i, n in enumerate(found.names)]
    return {**manifest, "format": "csv", "compression": compression, "encoding": codec,
            "encoding_guessed": guessed, "delimiter": delimiter, "header": header,
            "columns": names}


def _too_big_to_check(path: Path, kind: str, member_size: int | None) -> bool:
    """Whether a bounded check must leave a spreadsheet to the run: an .xlsx file's top rows
    are streamed (:mod:`~pipelines.tables.xlsxrows`), anything else is read whole."""
    if kind == "xlsx" and member_size is None:
        return False
    return (member_size if member_size is not None else path.stat().st_size) > CHECK_WHOLE_LIMIT


def _gzipped_member(path: Path, member: str | None) -> bool:
    if member is None:
        return False
    with files.text_stream(path, member) as s:
        return type(s).__name__ == "GzipFile"


def _csv_header(path: Path, member: str | None, label: str, data: bytes, whole: bool,
                encoding: str, delimiter: str, whole_file: bool) -> tuple[list[str], str, bool]:
    """The header of the CSV whose first HEADER_LIMIT bytes are ``data`` (``whole``: all of
    it), its encoding and whether that was guessed."""
    from ..csvheader import parse_header

    guessed = False
    codec = encoding.lower().replace("_", "-")
    if codec in ("auto", "") and data.startswith(_UTF16_BOMS):
        codec, guessed = "utf-16", True
    elif codec in ("auto", ""):
        if whole_file and not whole:
            with files.text_stream(path, member) as s:
                codec = files.guess_encoding(s)
        else:
            try:
                data.decode("utf-8") if whole else _utf8_prefix(data)
                codec = "utf-8"
            except UnicodeDecodeError:
                codec = files.eight_bit(data)
        guessed = codec != "utf-8"
        if codec == files.MIXED:
            raise InputError(
                f"{label} mixes text encodings: some of it is UTF-8 and some is not (Windows-"
                "1252 or Latin-1), as a file edited in two programs or pasted together from "
                "two exports is; read as either, part of its text would be garbled. Save it "
                "again in one encoding (Excel: \"CSV UTF-8\"), or set the stage's encoding "
                "option if you know which it is")
    codec = ("latin-1" if codec in ("latin-1", "latin1", "iso-8859-1") else
             WINDOWS_1252 if codec in ("windows-1252", "cp1252") else
             "utf-16" if codec in ("utf-16", "utf16") else "utf-8")
    header = parse_header(data, whole, label, encoding=_python_codec(codec),
                          delimiter=delimiter, limit=HEADER_LIMIT)
    return header, codec, guessed


def _python_codec(codec: str) -> str:
    """Python's name for the text ``codec`` (a manifest's encoding): a UTF-8 byte-order mark
    is not text."""
    return {"utf-8": "utf-8-sig", **TRANSCODED}.get(codec, codec)


def _title_line(data: bytes, header: list[str], codec: str, delimiter: str) -> str | None:
    """What is wrong when the CSV's first line is a title above its header (``Table 1:
    Deaths by area``, alone or with its other cells empty, as Excel saves a caption row)
    rather than the header: a line below fills columns the first line leaves without a
    name.  Read from the file's first lines only (``data``, its first bytes)."""
    named = [i for i, h in enumerate(header) if h.strip()]
    if len(named) != 1:
        return None
    import csv
    import io

    text = data.decode(_python_codec(codec), errors="replace")
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        below = [r for _n, r in zip(range(6), rows)][1:]
    except csv.Error:
        return None
    for line, row in enumerate(below, 2):
        if sum(1 for i, v in enumerate(row) if v.strip() and i != named[0]) >= 2:
            title = header[named[0]]
            cut = title if len(title) <= 60 else title[:59] + "…"
            return (f"its first line, {cut!r}, names one column only, but line {line} has "
                    f"{sum(1 for v in row if v.strip())} values: the first line looks like a "
                    "title above the header, and a CSV's first line must be its header; "
                    "delete the lines above the header (or send the spreadsheet, whose title "
                    "rows are found and skipped)")
    return None


def _markup(data: bytes) -> str | None:
    """What a text file whose first bytes are ``data`` is when it is markup (an HTML table,
    Excel's 2003 XML), or None."""
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not head.startswith(b"<"):
        return None
    if b"urn:schemas-microsoft-com:office:spreadsheet" in data:
        return "an XML Spreadsheet 2003 file"
    if head.startswith((b"<!doctype html", b"<html", b"<table")) or b"<html" in head[:1024]:
        return "a web page (HTML)"
    return None


def _utf8_prefix(data: bytes) -> None:
    """Decode a prefix cut anywhere: a character cut in two at the end is not an error."""
    import codecs

    codecs.getincrementaldecoder("utf-8")().decode(data, final=False)


def _identify_sheets(book: Workbook, columns: Columns, label: str, sheet: Any, header_row: Any,
                     all_sheets: bool | str) -> list[dict[str, Any]]:
    names = book.sheet_names()
    chosen = _chosen_sheets(names, sheet, label)
    given = _header_rows(header_row)
    fits, why = [], []
    for name in chosen or names:
        rows = book.top_rows(name, PROBE_ROWS)

        def score(cells: list[str], title: list[str]) -> tuple | None:
            rate = getattr(columns, "rate", None)     # match() without the words of a problem
            rated = rate(cells, title) if rate else columns.match(cells, title).score
            return rated if rated and rated[-1] > 0 else None

        spot = find_header(rows, score if getattr(columns, "rates", True) else None, given)
        if spot is None:
            why.append(f"sheet {name!r}: no header row in its first {PROBE_ROWS} rows")
            continue
        found = columns.match(spot.cells, spot.title)
        if found.problem:
            why.append(f"sheet {name!r} (header in row {_rows(spot.rows)}): {found.problem}")
            continue
        names_found = [n or f"{UNUSED}{i}" for i, n in enumerate(found.names)]
        if all_sheets == "same" and fits and not chosen and set(_given(names_found)) != set(
                _given(fits[0]["columns"])):
            continue        # another table (a MORT book's Table 2), not Table 1 continued
        fits.append({"sheet": name, "header_rows": spot.rows, "data_row": spot.data_row,
                     "header": spot.cells, "columns": names_found})
        if not all_sheets and not chosen:
            break
    if chosen and why:
        raise InputError(f"{label}: {'; '.join(why)}")
    if not fits:
        detail = "; ".join(why) if why else "it has no sheets"
        raise InputError(f"{label} has no sheet that is {columns.what}: {detail}")
    return fits


def _given(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(UNUSED)]


def _rows(rows: list[int]) -> str:
    return " and ".join(str(r) for r in rows)


def _chosen_sheets(names: list[str], sheet: Any, label: str) -> list[str]:
    if sheet is None:
        return []
    out = []
    for s in sheet if isinstance(sheet, list) else [sheet]:
        if isinstance(s, int) and not isinstance(s, bool):
            if not 0 <= s < len(names):
                raise InputError(f"{label} has {len(names)} sheet(s), so it has no sheet {s} "
                                 f"(sheets count from 0: {_listed(names)})")
            out.append(names[s])
        elif s in names:
            out.append(s)
        else:
            close = [n for n in names if n.strip().lower() == str(s).strip().lower()]
            if len(close) == 1:
                out.append(close[0])
                continue
            raise InputError(f"{label} has no sheet {s!r} (its sheets: {_listed(names)}); "
                             "check the extract stage's sheet option")
    return out


def _listed(names: list[str]) -> str:
    return ", ".join(f"{i}: {n!r}" for i, n in enumerate(names[:20]))


def _header_rows(header_row: Any) -> list[int] | None:
    if header_row is None:
        return None
    rows = header_row if isinstance(header_row, list) else [header_row]
    return [int(r) for r in rows]


# --------------------------------------------------------------------------- reading


@dataclass
class Source:
    """A FROM item over the whole table (``sql``, with ``params`` to bind), its columns."""

    sql: str
    params: dict[str, Any]
    columns: list[str]
    dropped_rows: int = 0
    #: columns whose every cell was a number (a spreadsheet's): ``sql`` also gives each as
    #: DOUBLE, named :func:`~pipelines.tables.sheets.number_column`, the value its text parses to
    numbers: tuple[str, ...] = ()


def present(manifest: dict[str, Any]) -> list[str]:
    """The names the manifest's table gives, each once, in the order first met."""
    if manifest.get("format") == "spreadsheet":
        names = [n for s in manifest["sheets"] for n in s["columns"]]
    else:
        names = list(manifest["columns"])
    return list(dict.fromkeys(n for n in names if not n.startswith(UNUSED)))


def read_source(con: Any, manifest: dict[str, Any], scratch: Path, *,
                key: Sequence[str] = (), input_file: str | None = None,
                prefix: str = "_ahgd_src") -> Source:
    """The whole table of ``manifest`` as a FROM item on ``con`` (see the module's docstring).
    ``scratch`` is a folder for a ZIP member copied out (removed again before returning)."""
    fmt = manifest.get("format", "csv")
    if fmt == "spreadsheet":
        return _read_sheets(con, manifest, key, prefix)
    names = list(manifest["columns"])
    member = manifest.get("member")
    transcoded = TRANSCODED.get(manifest.get("encoding", ""))
    if member is None and not transcoded:
        sql, params = read_csv_sql(names, delimiter=manifest["delimiter"],
                                   encoding=manifest["encoding"],
                                   compression=manifest.get("compression"))
        return Source(sql, {"path": manifest["path"], **params}, present(manifest))
    scratch.mkdir(parents=True, exist_ok=True)
    # a ZIP member is copied out; Windows-1252 or UTF-16 text (of a file or a member) is
    # copied as UTF-8
    encoding = "utf-8" if transcoded else manifest["encoding"]
    sql, params = read_csv_sql(names, delimiter=manifest["delimiter"], encoding=encoding)
    table = f"temp.{quote(prefix)}"
    copy = None
    try:
        try:
            copy = (files.transcode(manifest["path"], member, scratch / "utf8.csv", transcoded)
                    if transcoded else files.extract_member(manifest["path"], member,
                                                            scratch / "member.csv"))
        except UnicodeDecodeError as exc:   # a byte the encoding has no character for
            what = f", member {member}" if member else ""
            raise InputError(
                f"input file {manifest['path']}{what} is not {_SPELLED[transcoded]} text "
                f"({exc.reason}: a byte that encoding has no character for, or the file ends "
                "in the middle of one, as a copy cut short does); save it as \"CSV UTF-8\", "
                "or set the stage's encoding option to the one it is in") from None
        con.execute(f"CREATE OR REPLACE TEMP TABLE {quote(prefix)} AS SELECT * FROM {sql}",
                    {"path": str(copy), **params})
    except InputError:
        raise
    except Exception as exc:
        if copy is None:   # the copy itself failed (a full disk): not the file's fault
            raise
        problem = csv_error(exc, input_file=str(copy), path=copy,
                            delimiter=manifest["delimiter"], encoding=encoding)
        if problem is None:
            raise
        where = str(problem).split(", ", 1)[-1]
        what = (f", member {member}" if member else "") + (
            f" (read as {_SPELLED[transcoded]})" if transcoded else "")
        raise InputError(f"input file {manifest['path']}{what}, {where}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Source(table, {}, present(manifest))


def _read_sheets(con: Any, manifest: dict[str, Any], key: Sequence[str], prefix: str) -> Source:
    book = Workbook(manifest["path"], manifest.get("member"), manifest.get("kind"))
    groups: dict[tuple[str, ...], str] = {}
    dropped = 0
    con.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {STAGING} (COMPRESS)")
    for s in manifest["sheets"]:
        wanted = {i: n for i, n in enumerate(s["columns"]) if not n.startswith(UNUSED)}
        names = tuple(sorted(wanted.values()))
        table = groups.get(names)
        create = table is None
        if create:
            table = groups[names] = f"{STAGING}.{quote(f'{prefix}_{len(groups)}')}"
        dropped += book.stage(con, s["sheet"], s["data_row"], wanted, table, create=create)
    # numbers and dates were staged as such: each table read with every cell as text (and,
    # from one table, its numbers as such too)
    if len(groups) == 1:
        sql, numbers = staged_sql(con, next(iter(groups.values())))
        return Source(sql, {}, present(manifest), dropped, tuple(numbers))
    tables = [text_sql(con, t) for t in groups.values()]
    join = [k for k in key if all(k in n for n in groups)]
    if not join:
        sql = " UNION ALL BY NAME ".join(f"SELECT * FROM {t}" for t in tables)
        return Source(f"({sql})", {}, present(manifest), dropped)
    others = [n for n in present(manifest) if n not in join]
    cols = [quote(k) for k in join]
    for n in others:
        having = [f"g{i}.{quote(n)}" for i, names in enumerate(groups) if n in names]
        cols.append(f"coalesce({', '.join(having)}) AS {quote(n)}" if len(having) > 1
                    else f"{having[0]} AS {quote(n)}")
    using = ", ".join(quote(k) for k in join)
    body = f"{tables[0]} AS g0" + "".join(f" FULL JOIN {t} AS g{i} USING ({using})"
                                           for i, t in enumerate(tables) if i)
    return Source(f"(SELECT {', '.join(cols)} FROM {body})", {}, present(manifest), dropped)


def changed_since(manifest: dict[str, Any]) -> str | None:
    """Why the file of ``manifest`` may not be read now (gone, or changed since it was
    identified), or None."""
    path = Path(manifest["path"])
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (f"input file {path} is gone since the extract stage read it; run the pipeline "
                "again with the file")
    if "bytes" in manifest and (st.st_size, st.st_mtime_ns) != (manifest["bytes"],
                                                                manifest["mtime_ns"]):
        return (f"input file {path} changed after the extract stage hashed it; run the "
                "pipeline again from extract")
    return None


__all__ = ["HeaderFit", "Columns", "Source", "identify", "read_source", "present", "changed_since",
           "UNUSED"]
