"""What the bundled AHGD pipelines share: finding and identifying the input
file, reading it with DuckDB, the SQL that parses numbers and checks parsed
tables.  The columns each pipeline reads (and their synonyms) are a
:class:`~pipelines.ahgd.headers.Layout`; finding the file, identifying it (CSV,
gzip'd, spreadsheet, in a ZIP), reading it and loading the warehouse are the
generic ``pipelines.TableExtractor``, ``pipelines.read_table`` and
``pipelines.WarehouseLoader``.

Every stage follows the same split so that the data is written once per run
before it reaches the warehouse:

* ``extract`` finds the file, reads **only its header** (a spreadsheet's top
  rows), matches the columns and hashes the file; its output is a small
  manifest (a plain value);
* ``transform`` reads the table into DuckDB (every column text) and parses,
  cleans and derives in one SQL statement; its output is the run's table;
* ``validate`` runs the YAML ``validation_rules`` and the SQL checks of a
  validator class against that table (a passthrough: nothing is copied);
* ``load`` copies the table into ``<state dir>/warehouse.duckdb``.

Cells that are present but not numbers are not turned into silent NULLs: the
transform lists them per row in ``_parse_errors`` and the validator fails the
run naming the column and an example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipelines import InputError, TableExtractor, quote, read_csv_sql, read_table
from pipelines.tables.sheets import number_column
from pipelines.tables.source import Source

from .headers import Column, Layout, python_codec

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "config"
DATA_DIR = PACKAGE_DIR / "data"

#: cells read as "suppressed / not published" (NULL) besides blank ones; compared lower-case
DEFAULT_SUPPRESSED = ("n.p.", "np", "..", "-", "\u2014", "\u2013", "n.a.", "n/a")
PARSE_ERRORS = "_parse_errors"
SOURCE_SHA = "_source_sha256"
RUN_ID = "_run_id"


# --------------------------------------------------------------------------- finding the input


class SourceExtractor(TableExtractor):
    """Find the input file, match its header to ``layout``, hash it: a manifest, not rows.

    The file is found as :class:`pipelines.CsvExtractor` finds it, and may be
    a CSV (plain, gzip'd or in a ZIP) or a spreadsheet (``.xlsx``, ``.xls``,
    ``.ods``, or one in a ZIP): :class:`pipelines.TableExtractor` identifies
    it from its top.  The rows are read by the transform (:func:`read_input`).
    Options (the stage's YAML ``config``): ``source`` (used when the run was
    not started by a file; relative to ``base_dir``, by default the bundled
    config folder), ``columns`` (the layout's column -> the file's column name
    or position, counting from 1), ``sheet``, ``header_row``, ``member``,
    ``encoding`` (``auto``, the default: UTF-8, else Latin-1 and the log says
    so; or ``utf-8``, ``latin-1``), ``delimiter``.
    """

    layout: Layout
    default_base_dir = CONFIG_DIR
    #: of a workbook: every sheet that fits (True: joined on the layout's key), the first
    #: (False), or the first and those continuing it ("same")
    all_sheets: bool | str = False

    def __init__(self, source: str | None = None, encoding: str = "auto", delimiter: str = ",",
                 base_dir: str | None = None, columns: Mapping[str, Any] | None = None,
                 sheet: Any = None, header_row: Any = None, member: str | None = None):
        if str(encoding).lower() != "auto":
            python_codec(encoding)
        super().__init__(source=source, encoding=encoding, delimiter=delimiter,
                         base_dir=base_dir, columns=columns, sheet=sheet,
                         header_row=header_row, member=member, lineage=False)
        self.bound = self.layout.bind(self.columns)

    def table_columns(self) -> Any:
        return self.bound

    def missing_input(self, context: Any) -> InputError:
        inbox = Path(context.state_dir) / "inbox" / context.pipeline_name
        return InputError(f"pipeline {context.pipeline_name!r} needs an input file: drop one "
                          f"into {inbox} or pass --input FILE")

    def extract(self, context: Any) -> dict[str, Any]:
        manifest = self.manifest(context)
        if manifest["format"] == "spreadsheet":
            where = {s["sheet"]: _given(s["header"], s["columns"]) for s in manifest["sheets"]}
        else:
            where = _given(manifest["header"], manifest["columns"])
        context.log.info("source_identified", path=manifest["path"], sha256=manifest["sha256"],
                         bytes=manifest["bytes"], format=manifest["format"],
                         member=manifest.get("member"), columns=where)
        return manifest


#: the name earlier versions (and YAML files) used
CsvExtractor = SourceExtractor


def _given(header: list[str], names: list[str]) -> dict[str, str]:
    return {n: h for h, n in zip(header, names) if not n.startswith("_unused_")}


def read_input(context: Any, layout: Layout) -> Source:
    """The whole table of the extract stage's manifest as a FROM item on ``context.duckdb``,
    every column VARCHAR and named by what it gives (:func:`pipelines.read_table`).  A
    manifest recorded before spreadsheets were read (a CSV's, its columns possibly a
    mapping) is read as it was then."""
    manifest = dict(context.get_output("extract"))
    if "format" not in manifest:
        manifest.update(format="csv", columns=source_columns(manifest, layout),
                        encoding="latin-1" if python_codec(manifest["encoding"]) == "latin-1"
                        else "utf-8")
    return read_table(context, manifest, key=layout.key)


def source_columns(manifest: Mapping[str, Any], layout: Layout) -> list[str]:
    """The name of each column of the extracted file, in the file's order.

    ``read_csv(columns=...)`` names columns by position, so this order is what
    keeps IRSD's values in IRSD's column. The manifest records it as a list,
    which keeps its order through the event log. Manifests recorded before
    that (a mapping, whose keys the log stored sorted) are matched again from
    their recorded header rather than trusted.
    """
    columns = manifest["columns"]
    if isinstance(columns, list):
        return [str(c) for c in columns]
    found = layout.bind().match(list(manifest["header"]), [])
    return [n or f"_unused_{i}" for i, n in enumerate(found.names)]


def read_source_sql(manifest: Mapping[str, Any], layout: Layout) -> tuple[str, dict[str, Any]]:
    """``read_csv(...)`` of the extracted file, every column VARCHAR, named by what it gives
    (:func:`pipelines.read_csv_sql`: a ragged row or an unclosed quote fails, naming the line).

    Refuses a file that changed since the extract stage identified it (its
    size or modification time differ): its hash would no longer be its lineage.
    """
    path = Path(manifest["path"])
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"input file {path} is gone since the extract stage read it; run the "
                         "pipeline again with the file") from None
    if (st.st_size, st.st_mtime_ns) != (manifest["bytes"], manifest["mtime_ns"]):
        raise InputError(f"input file {path} changed after the extract stage hashed it; run the "
                         "pipeline again from extract")
    encoding = "latin-1" if python_codec(manifest["encoding"]) == "latin-1" else "utf-8"
    sql, params = read_csv_sql(source_columns(manifest, layout), delimiter=manifest["delimiter"],
                               encoding=encoding)
    return sql, {"path": str(path), **params}


# --------------------------------------------------------------------------- parsing SQL


def blank_sql(raw: str, markers: str = "$suppressed") -> str:
    """True when ``raw`` is empty or a suppression marker: the published "no value"."""
    text = f"lower(trim({raw}))"
    return f"(coalesce({text}, '') = '' OR list_contains({markers}, {text}))"


def number_sql(raw: str) -> str:
    """A VARCHAR expression as DOUBLE, or NULL when it is not a finite number.

    Accepts ``10``, ``10.0``, ``-3.5``, ``1e3`` and thousands separators in
    their proper places (``55,374``, ``1,234.5``; not ``1,2``).
    """
    grouped = r"[+-]?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?"
    value = (f"CASE WHEN contains({raw}, ',') THEN (CASE WHEN regexp_full_match(trim({raw}), "
             f"'{grouped}') THEN TRY_CAST(replace(trim({raw}), ',', '') AS DOUBLE) END) "
             f"WHEN NOT contains({raw}, '+-') THEN TRY_CAST({raw} AS DOUBLE) END")
    # '+-5' is no number, but DuckDB's cast reads it as -5 (as of 1.x); '-+5', '--5' it refuses
    # nan and inf parse as DOUBLE but are not data; DuckDB evaluates the repeated
    # expression once (common subexpression elimination)
    return f"CASE WHEN isfinite({value}) THEN {value} END"


def integer_sql(number: str) -> str:
    """A DOUBLE expression as BIGINT when it is a whole number in range, else NULL."""
    return (f"CASE WHEN {number} = trunc({number}) AND abs({number}) < 9.2e18 "
            f"THEN CAST({number} AS BIGINT) END")


@dataclass
class ParsedColumns:
    """SQL for the numeric columns of a file: typed values, and the list of cells that failed.

    Build the query in two levels: ``inner`` selects ``<name>__num`` (DOUBLE)
    for each column next to the raw text, ``outer`` the typed values and
    ``_parse_errors`` (a list of {column, value, problem}, NULL when the row
    is clean).
    """

    columns: list[Column] = field(default_factory=list)
    #: columns the source also gives as numbers (:attr:`Source.numbers`, each named
    #: :func:`number_column`): taken as they are, not parsed from their text again
    numbers: Sequence[str] = ()

    def inner(self) -> list[str]:
        return [f"{self._number(c)} AS {quote(c.name + '__num')}" for c in self.columns]

    def _number(self, c: Column) -> str:
        if c.name in self.numbers:
            return quote(number_column(c.name))
        return number_sql(quote(c.name))

    def typed(self, c: Column) -> str:
        num = quote(c.name + "__num")
        return integer_sql(num) if c.kind == "integer" else num

    def outer(self) -> list[str]:
        return [f"{self.typed(c)} AS {quote(c.name)}" for c in self.columns]

    def errors(self) -> str:
        items, tests = [], []
        for c in self.columns:
            raw, num = quote(c.name), quote(c.name + "__num")
            bad_number = f"({num} IS NULL AND NOT {blank_sql(raw)})"
            bad = bad_number
            problem = "'not a number'"
            if c.name in self.numbers:
                # a number in the file: never "not a number"; its text (not read, so as not
                # to write every cell as text) is the number's own
                if c.kind != "integer":
                    continue
                bad, problem = f"({num} IS NOT NULL AND {self.typed(c)} IS NULL)", \
                    "'not a whole number'"
                raw = f"CAST({num} AS VARCHAR)"
            elif c.kind == "integer":
                bad = f"({bad_number} OR ({num} IS NOT NULL AND {self.typed(c)} IS NULL))"
                problem = (f"CASE WHEN {num} IS NULL THEN 'not a number' "
                           "ELSE 'not a whole number' END")
            tests.append(bad)
            items.append(f"CASE WHEN {bad} THEN {{'column': '{c.name}', 'value': {raw}, "
                         f"'problem': {problem}}} END")
        if not items:
            kind = 'STRUCT("column" VARCHAR, "value" VARCHAR, problem VARCHAR)[]'
            return f"NULL::{kind} AS {PARSE_ERRORS}"
        # a list comprehension: lambda syntax differs between DuckDB 1.x and 2.x
        return (f"CASE WHEN {' OR '.join(tests)} THEN [e FOR e IN [{', '.join(items)}] "
                f"IF e IS NOT NULL] END AS {PARSE_ERRORS}")


def suppressed_param(extra: Sequence[str] | None) -> list[str]:
    markers = DEFAULT_SUPPRESSED if extra is None else tuple(extra)
    return [str(m).strip().lower() for m in markers]


# --------------------------------------------------------------------------- validation in SQL


def parse_error_problems(con: Any, table: str, key: Sequence[str]) -> list[str]:
    """One problem per column with cells that are present but not (whole) numbers."""
    cols = ", ".join(quote(k) for k in key)
    rows = con.execute(
        f"SELECT e.column, e.problem, count(*), min(e.value), "
        f"arg_min(concat_ws(' ', {cols}), e.value) "
        f"FROM (SELECT unnest({PARSE_ERRORS}) AS e, {cols} FROM {table} "
        f"WHERE {PARSE_ERRORS} IS NOT NULL) GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    return [f"column {col} has {_cells(n)} {problem}, e.g. {value!r} (row {where}); blank "
            "cells are read as suppressed (NULL), anything else must be a number such as 55,374 "
            "or 10.0" for col, problem, n, value, where in rows]


def _cells(n: int) -> str:
    return "1 cell that is" if n == 1 else f"{n} cells that are"


def duplicate_key_problems(con: Any, table: str, key: Sequence[str]) -> list[str]:
    """Rows whose key is incomplete, then keys that occur more than once among the others.
    (Rows with part of their key empty are what a sheet gives whose label cells are merged
    down over several rows, or left blank under the row they apply to: said so, rather than
    counted as duplicates of each other, "e.g. 'Males'".)"""
    cols = ", ".join(quote(k) for k in key)
    complete = " AND ".join(f"{quote(k)} IS NOT NULL" for k in key)
    shown = ", ".join(f"coalesce(CAST({quote(k)} AS VARCHAR), 'empty')" for k in key)
    problems = []
    m, partial = con.execute(f"SELECT count(*), min(concat_ws(', ', {shown})) FROM {table} "
                             f"WHERE NOT ({complete})").fetchone()
    if m:
        problems.append(
            f"{m} row(s) have part of their key ({', '.join(key)}) empty, e.g. ({partial}): "
            "a spreadsheet whose label cells are merged down over several rows, or left blank "
            "under the row they apply to, gives the value to the first row only; unmerge the "
            "cells and fill in every row, then send the file again")
    n, example = con.execute(
        f"SELECT count(*), min(k) FROM (SELECT concat_ws(' ', {cols}) AS k FROM {table} "
        f"WHERE {complete} GROUP BY {cols} HAVING count(*) > 1)").fetchone()
    if n:
        problems.append(f"{n} value(s) of ({', '.join(key)}) occur more than once, e.g. "
                        f"{example!r}; each must occur once")
    return problems


