"""``TableExtractor``: a table as publishers ship it (CSV, gzip'd, a spreadsheet, in a ZIP)
read into the stage's table, its columns mapped to the names the pipeline needs.

    stages:
      - name: extract
        type: extractor
        class: pipelines.TableExtractor
        config:
          sheet: "Table 2"                       # a spreadsheet's sheet, by name or index
          columns: {area: 1, deaths: "Number of deaths", rate: "Age-standardised rate"}

It reads what :class:`~pipelines.extractors.CsvExtractor` reads, and also
``.csv.gz``, ``.xlsx``/``.xls``/``.ods`` (the header found below title rows,
two-line headers joined, footnotes dropped: :mod:`pipelines.tables.sheets`) and
a ZIP holding one of those (``member`` picks one of several).  Publishers'
conventions are read as they mean: ``np``, ``n.p.``, ``..``, ``-``, ``—``,
``n.a.`` and blank are NULL (``null_values`` replaces the list), ``55,374`` is
a number (``thousands``, default ``,``), a number stored as text is a number, a
code with leading zeros stays text, a UTF-8 byte-order mark and Windows line
endings are nothing, and a file that is not UTF-8 is read as Latin-1 and the
log says so (``encoding: auto``, the default).  With ``columns`` the table has
those columns, named as the mapping says, and only those (a name, matched on
its words, or a position counting from 1); a column the file lacks fails the
stage with :class:`~pipelines.errors.InputError`, naming what the file has.
:meth:`check_input` checks a file the same way from its top alone (a drop
folder's ``input_check.callable`` can call it; the bundled pipelines' do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..context import quote
from ..errors import ConfigError, InputError
from ..extractors import SOURCE_SHA, CsvExtractor
from .headers import Wanted, mapping_lines, match_header, show_header
from .source import HeaderFit, Source, changed_since, identify, read_source

#: cells that publishers write for "no value" (compared trimmed, lower case), besides blank
NULL_VALUES = ("np", "n.p.", "..", "-", "—", "–", "n.a.", "n/a")
_NAMES = {"latin-1": "Latin-1", "windows-1252": "Windows-1252 (Excel's \"CSV (Comma "
          "delimited)\" on Windows)", "utf-16": "UTF-16 (its byte-order mark)"}
ENCODINGS = ("auto", "utf-8", "utf8", "latin-1", "latin1", "windows-1252", "cp1252",
             "utf-16", "utf16")


class AllColumns:
    """Every column of the file under its own name; or, with ``mapping``, those it names."""

    what = "a table"
    key: tuple[str, ...] = ()

    def __init__(self, mapping: Mapping[str, Any] | None = None):
        self.mapping = dict(mapping or {})
        self.rates = bool(self.mapping)

    def match(self, header: list[str], title: list[str]) -> HeaderFit:
        if not self.mapping:
            return HeaderFit([h if h.strip() else None for h in header])
        wanted = [Wanted(n) for n in self.mapping]
        found = match_header(header, wanted, mapping=self.mapping)
        names = [None] * len(header)
        for name, i in found.positions.items():
            names[i] = name
        problem = None
        if found.problems:
            problem = (f"does not have the columns the extract stage's columns option names: "
                       f"{'; '.join(found.problems)}")
        return HeaderFit(names, problem, (not found.problems, len(found.positions)))


def read_table(context: Any, manifest: Mapping[str, Any], *, key: tuple[str, ...] = ()) -> Source:
    """The whole table of an extract stage's manifest as a FROM item on ``context.duckdb``,
    every column VARCHAR; InputError when the file is gone or changed since."""
    problem = changed_since(dict(manifest))
    if problem:
        raise InputError(problem)
    scratch = Path(context.state_dir) / "tmp" / f"{context.run_id}.{context.stage_name}"
    return read_source(context.duckdb, dict(manifest), scratch, key=key,
                       input_file=context.input_file)


class TableExtractor(CsvExtractor):
    """Read a table as it comes into the stage's table (see the module's docstring).

    Options, besides :class:`~pipelines.extractors.CsvExtractor`'s: ``columns``
    (name the pipeline needs -> name or position in the file), ``sheet`` (name or
    0-based index, or a list of them read one after the other), ``header_row``
    (the header's row number as the spreadsheet shows it, or a list of two for a
    two-line header; found by itself otherwise), ``member`` (of a ZIP file),
    ``null_values``.  ``encoding`` is ``auto`` by default.
    """

    def __init__(self, source: str | None = None, encoding: str = "auto", delimiter: str = ",",
                 quote: str = '"', escape: str = '"', types: Mapping[str, str] | None = None,
                 all_varchar: bool = False, thousands: str | None = ",", lineage: bool = True,
                 base_dir: str | None = None, columns: Mapping[str, Any] | None = None,
                 sheet: Any = None, header_row: Any = None, member: str | None = None,
                 null_values: list[str] | None = None):
        if str(encoding).lower() not in ENCODINGS:
            raise ConfigError(f"encoding {encoding!r} is not supported; use auto, utf-8, "
                              "latin-1, windows-1252 or utf-16")
        plain = str(encoding).lower() in ("auto", "windows-1252", "cp1252", "utf-16", "utf16")
        super().__init__(source=source, encoding="utf-8" if plain else encoding,
                         delimiter=delimiter, quote=quote, escape=escape, types=types,
                         all_varchar=all_varchar, thousands=thousands, lineage=lineage,
                         base_dir=base_dir)
        self.encoding = str(encoding).lower()
        self.columns = check_columns(columns)
        self.sheet, self.member = check_sheet(sheet), member
        self.header_row = check_header_row(header_row)
        self.null_values = [str(v).strip().lower() for v in (
            NULL_VALUES if null_values is None else null_values)]

    # -- the steps --------------------------------------------------------------------------

    def table_columns(self) -> Any:
        """What the header must give (an object with ``match``: :class:`AllColumns`)."""
        return AllColumns(self.columns)

    def identify(self, path: Path, *, whole_file: bool = True) -> dict[str, Any]:
        """The manifest of the file at ``path``; InputError when it does not fit."""
        return identify(path, self.table_columns(), sheet=self.sheet, member=self.member,
                        header_row=self.header_row, encoding=self.encoding,
                        delimiter=self.delimiter, whole_file=whole_file,
                        all_sheets=self.all_sheets)

    all_sheets = False

    def check_input(self, path: str | Path) -> str | None:
        """For a drop folder's input check: why ``path`` does not fit, from its top alone."""
        try:
            self.identify(Path(path), whole_file=False)
        except InputError as exc:
            return str(exc)
        except OSError as exc:
            return f"{Path(path).name} cannot be read ({exc.strerror or exc})"
        return None

    def manifest(self, context: Any) -> dict[str, Any]:
        """The run's file identified: the manifest with its hash, size and time."""
        path = self.locate(context)
        found = self.identify(path)
        st = path.stat()
        found.update(sha256=self.source_sha256(context, path), bytes=st.st_size,
                     mtime_ns=st.st_mtime_ns)
        if found.get("encoding_guessed"):
            context.log.warning("input_encoding_guessed", path=str(path),
                                encoding=found["encoding"],
                                note=f"not UTF-8 text, so read as "
                                     f"{_NAMES.get(found['encoding'], found['encoding'])}; set "
                                     "the extract stage's encoding option to say otherwise")
        return found

    def extract(self, context: Any) -> Any:
        manifest = self.manifest(context)
        source = read_table(context, manifest)
        names = source.columns
        _refuse_clashes(Path(manifest["path"]).name, names, self.lineage)
        given = {n: t for n in names for c, t in self.types.items() if c.lower() == n.lower()}
        unknown = [c for c in self.types if c.lower() not in {n.lower() for n in names}]
        if unknown:
            raise InputError(f"input file {manifest['path']} has no column(s) "
                             f"{', '.join(unknown)} named in the stage's types option (its "
                             f"columns: {show_header(names, 30)})")
        detect = [] if self.all_varchar else [n for n in names if n not in given]
        found = self._detect(context, source.sql, dict(source.params), detect,
                             Path(manifest["path"])) if detect else {}
        columns = []
        for n in names:
            kind = given.get(n) or found.get(n)
            columns.append(f"CAST({self._value(quote(n))} AS {kind}) AS {quote(n)}" if kind
                           else f"{self._null(quote(n))} AS {quote(n)}")
        params = dict(source.params)
        if self.lineage:
            params["sha"] = manifest["sha256"]
            columns.append(f"$sha AS {SOURCE_SHA}")
        context.log.info("table_read", path=manifest["path"], format=manifest.get("format"),
                         sheets=[s["sheet"] for s in manifest.get("sheets", [])] or None,
                         columns=len(names), rows_dropped=source.dropped_rows or None,
                         types={n: t for n, t in found.items() if t})
        return context.sql(f"SELECT {', '.join(columns)} FROM {source.sql}", params=params)

    # -- cells ------------------------------------------------------------------------------

    def _null(self, column: str) -> str:
        markers = ", ".join("'" + v.replace("'", "''") + "'" for v in self.null_values)
        if not markers:
            return f"nullif(trim({column}), '')"
        return (f"(CASE WHEN lower(trim({column})) IN ({markers}) THEN NULL "
                f"ELSE nullif(trim({column}), '') END)")

    def _value(self, column: str) -> str:
        plain = super()._value(column)   # trimmed, thousands read
        return plain.replace(f"nullif(trim({column}), '')", self._null(column))


def _refuse_clashes(name: str, names: list[str], lineage: bool) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names, 1):
        first = seen.setdefault(n.lower(), i)
        if first != i:
            raise InputError(f"{name}: the header names column {n!r} twice (columns {first} "
                             f"and {i}); give each column its own name, or choose with the "
                             "columns option")
    if lineage and SOURCE_SHA in seen:
        raise InputError(f"{name} has a column {SOURCE_SHA}, which the extractor adds itself "
                         "(the file's SHA-256); rename it, or set lineage: false")


def check_columns(columns: Any) -> dict[str, Any]:
    if columns is None:
        return {}
    if not isinstance(columns, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, (str, int)) and not isinstance(v, bool)
            for k, v in columns.items()):
        raise ConfigError(f"columns {columns!r} must map the names the pipeline needs to the "
                          "file's column names or positions (counting from 1), such as "
                          "{sa2_code: SA2_MAINCODE_2021, irsd_score: 3}")
    bad = [f"{k}: {v}" for k, v in columns.items() if isinstance(v, int) and v < 1]
    if bad:
        raise ConfigError(f"columns {', '.join(bad)}: positions count from 1")
    return dict(columns)


def check_sheet(sheet: Any) -> Any:
    items = sheet if isinstance(sheet, list) else [sheet]
    if sheet is not None and (not items or not all(
            isinstance(s, (str, int)) and not isinstance(s, bool) for s in items)):
        raise ConfigError(f"sheet {sheet!r} must be a sheet's name, its index (from 0), or a "
                          "list of them")
    return sheet


def check_header_row(header_row: Any) -> Any:
    items = header_row if isinstance(header_row, list) else [header_row]
    if header_row is not None and not (
            1 <= len(items) <= 2 and all(isinstance(r, int) and not isinstance(r, bool)
                                         and r >= 1 for r in items)
            and (len(items) == 1 or items[1] == items[0] + 1)):
        raise ConfigError(f"header_row {header_row!r} must be the header's row number as the "
                          "spreadsheet shows it (from 1), or two adjacent rows such as [5, 6]")
    return header_row


__all__ = ["TableExtractor", "AllColumns", "read_table", "NULL_VALUES", "mapping_lines"]
