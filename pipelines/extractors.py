"""``CsvExtractor``: a CSV file read strictly into the stage's table, with its SHA-256.

    stages:
      - name: extract
        type: extractor
        class: pipelines.CsvExtractor
        config: {source: data/deaths.csv, types: {sa2_code: VARCHAR}}

The file is the run's input file (a drop folder's, ``--input``,
``run(input_file=...)``), else the ``source`` option, relative to the YAML
file's folder.  Nothing about the file is guessed: its first row names the
columns, the options give the delimiter, quote and encoding, and a row with
more or fewer values than the header, or a quote that is never closed, fails
the stage with an :class:`~pipelines.errors.InputError` naming the file and
the line (:mod:`pipelines.csvfile`).  Column types are chosen from *every*
value, not a sample: whole numbers BIGINT, other numbers DOUBLE, ``true`` /
``false`` BOOLEAN, ``YYYY-MM-DD`` DATE, ``YYYY-MM-DD HH:MM[:SS]`` TIMESTAMP,
anything else VARCHAR; a number written with leading zeros (``0800``) is a
code and stays text.  ``types`` sets a column's type instead, ``all_varchar``
keeps every column as text.  With ``lineage`` (default) the table gets a
``_source_sha256`` column, the file's SHA-256, which
:class:`~pipelines.loaders.WarehouseLoader` carries into the warehouse.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from state.store import sha256_file

from .context import quote
from .csvfile import csv_error, duckdb_encoding, one_char, read_csv_sql
from .csvheader import read_csv_header
from .errors import ConfigError, InputError

SOURCE_SHA = "_source_sha256"


def resolve_input(context: Any, source: str | os.PathLike[str] | None,
                  base_dir: str | os.PathLike[str] | None) -> Path | None:
    """The file to read: the run's input file, else ``source`` (relative to ``base_dir``,
    else to the YAML file's folder, else to the working directory); None with neither.
    A file that does not exist is an InputError naming it."""
    if context.input_file is not None:
        path = Path(context.input_file)
        what = "input file"
    elif source:
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = Path(os.path.normpath(Path(base_dir or context.config_dir or Path.cwd()) / path))
        what = "source file"
    else:
        return None
    if not path.is_file():
        raise InputError(f"{what} {path} of pipeline {context.pipeline_name!r} does not "
                         "exist; check the path (--input or the extract stage's source option)")
    return path.resolve()


class CsvExtractor:
    """Read a CSV file into the stage's table, strictly (see the module's docstring).

    Options (a YAML stage's ``config``): ``source``, ``encoding`` (``utf-8``, the
    default, or ``latin-1``), ``delimiter`` (``,``), ``quote`` (``"``), ``escape``
    (``"``: a quote inside a quoted value is written twice), ``types`` (column ->
    DuckDB type), ``all_varchar`` (False), ``thousands`` (a separator such as ``,``:
    ``55,374`` is then the number 55374), ``lineage`` (True), ``base_dir``.
    """

    #: where a relative ``source`` is found when neither ``base_dir`` nor a YAML folder says
    default_base_dir: Path | None = None

    def __init__(self, source: str | None = None, encoding: str = "utf-8", delimiter: str = ",",
                 quote: str = '"', escape: str = '"', types: Mapping[str, str] | None = None,
                 all_varchar: bool = False, thousands: str | None = None, lineage: bool = True,
                 base_dir: str | None = None):
        self.duckdb_encoding = duckdb_encoding(encoding)
        self.encoding = encoding
        self.delimiter = one_char(delimiter, "delimiter")
        self.quote, self.escape = one_char(quote, "quote"), one_char(escape, "escape")
        if types is not None and (not isinstance(types, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in types.items())):
            raise ConfigError(f"types {types!r} must map column names to DuckDB types, such as "
                              "{sa2_code: VARCHAR, deaths: BIGINT}")
        self.types = dict(types or {})
        self.all_varchar, self.lineage = bool(all_varchar), bool(lineage)
        if thousands is not None and thousands not in _SEPARATORS:
            raise ConfigError(f"thousands {thousands!r} must be one of "
                              f"{', '.join(repr(c) for c in _SEPARATORS)}")
        self.thousands = thousands
        self.source, self.base_dir = source, base_dir

    # -- the steps, each replaceable by a subclass ---------------------------------------------

    def locate(self, context: Any) -> Path:
        """The file this run reads (the run's input file, else ``source``)."""
        path = resolve_input(context, self.source, self.base_dir or self.default_base_dir)
        if path is None:
            raise self.missing_input(context)
        return path

    def missing_input(self, context: Any) -> InputError:
        name = context.pipeline_name
        return InputError(f"pipeline {name!r} needs an input file: start the run with one (a "
                          f"drop folder, `ahgd run {name} --input FILE`, run(input_file=...)) "
                          "or give its extract stage a source option")

    def header(self, path: Path) -> list[str]:
        """The column names of the file's first row, each non-empty and said once."""
        codec = "utf-8-sig" if self.duckdb_encoding == "utf-8" else "latin-1"
        names = read_csv_header(path, encoding=codec, delimiter=self.delimiter)
        seen: dict[str, int] = {}
        for i, name in enumerate(names, 1):
            if not name.strip():
                if not any(n.strip() for n in names[i:]):   # Excel's formatted empty columns
                    which = f"column {i}" if i == len(names) else f"columns {i}-{len(names)}"
                    raise InputError(
                        f"input file {path}, line 1: the header ends in {which} without a "
                        "name, as when a spreadsheet saved as CSV keeps empty columns at the "
                        "right (cells once formatted); delete them, or read the file with "
                        "pipelines.TableExtractor, which leaves columns without a name out")
                raise InputError(f"input file {path}: column {i} of the header has no name; "
                                 "name every column in the first row")
            first = seen.setdefault(name.lower(), i)
            if first != i:
                raise InputError(f"input file {path}: the header names column {name!r} twice "
                                 f"(columns {first} and {i}); give each column its own name")
        if self.lineage and SOURCE_SHA in seen:
            raise InputError(f"input file {path} has a column {SOURCE_SHA}, which the extractor "
                             "adds itself (the file's SHA-256); rename it, or set lineage: false")
        unknown = [c for c in self.types if c.lower() not in seen]
        if unknown:
            raise InputError(f"input file {path} has no column(s) {', '.join(unknown)} named in "
                             f"the stage's types option (its columns: {', '.join(names)})")
        return names

    def source_sha256(self, context: Any, path: Path) -> str:
        """The file's SHA-256 (the daemon and ``--input`` hashed the run's input file already)."""
        if context.input_file is not None and context.input_sha256 \
                and Path(context.input_file).resolve() == path:
            return context.input_sha256
        return sha256_file(path)

    def extract(self, context: Any) -> Any:
        path = self.locate(context)
        names = self.header(path)
        given = {n: t for n in names for c, t in self.types.items() if c.lower() == n.lower()}
        sql, params = read_csv_sql({n: given.get(n, "VARCHAR") for n in names},
                                   delimiter=self.delimiter, quote=self.quote,
                                   escape=self.escape, encoding=self.encoding)
        params["path"] = str(path)
        detect = [] if self.all_varchar else [n for n in names if n not in given]
        found = self._detect(context, sql, params, detect, path) if detect else {}
        columns = [f"CAST({self._value(quote(n))} AS {found[n]}) AS {quote(n)}" if found.get(n)
                   else quote(n) for n in names]
        if self.lineage:
            params["sha"] = self.source_sha256(context, path)
            columns.append(f"$sha AS {SOURCE_SHA}")
        context.log.info("csv_read", path=str(path), columns=len(names),
                         types={n: t for n, t in found.items() if t})
        return context.sql(f"SELECT {', '.join(columns)} FROM {sql}", params=params)

    # -- types ------------------------------------------------------------------------------------

    def _value(self, column: str) -> str:
        """A cell as its type is chosen from it: trimmed, empty as NULL, and with
        ``thousands``, ``55,374`` as ``55374`` (only with separators in their places)."""
        v = f"nullif(trim({column}), '')"
        if self.thousands is None:
            return v
        sep = self.thousands
        grouped = f"[+-]?[0-9]{{1,3}}([{sep}][0-9]{{3}})+([.][0-9]*)?" if sep != "." else \
            "[+-]?[0-9]{1,3}([.][0-9]{3})+(,[0-9]*)?"
        plain = f"replace({v}, '{sep.replace(chr(39), chr(39) * 2)}', '')"
        if sep == ".":  # 1.234,5: the decimal comma becomes a point
            plain = f"replace({plain}, ',', '.')"
        return f"(CASE WHEN regexp_full_match({v}, '{grouped}') THEN {plain} ELSE {v} END)"

    def _detect(self, context: Any, sql: str, params: dict[str, Any], names: list[str],
                path: Path) -> dict[str, str | None]:
        """Each column's type from all its values (one scan of the file, strictly read)."""
        parts = []
        for n in names:
            v = self._value(quote(n))
            parts += [f"count({v})"] + [f"count(*) FILTER (WHERE {v} IS NOT NULL AND NOT "
                                        f"coalesce({t.format(v=v)}, false))"
                                        for t in _TESTS.values()]
        try:
            counts = context.duckdb.execute(f"SELECT {', '.join(parts)} FROM {sql}",
                                            params).fetchall()[0]
        except Exception as exc:
            problem = csv_error(exc, input_file=context.input_file, path=path,
                                delimiter=self.delimiter, quote=self.quote, escape=self.escape,
                                encoding=self.duckdb_encoding)
            if problem is not None:
                raise problem from None
            raise
        found: dict[str, str | None] = {}
        width = 1 + len(_TESTS)
        for i, n in enumerate(names):
            present, *bad = counts[i * width:(i + 1) * width]
            found[n] = next((t for t, b in zip(_TESTS, bad) if b == 0), None) if present else None
        return found


#: candidate types, in order of preference, and the test each value ``v`` must pass
_TESTS = {
    "BIGINT": "regexp_full_match({v}, '[+-]?(0|[1-9][0-9]*)') AND TRY_CAST({v} AS BIGINT) "
              "IS NOT NULL",
    # '+-5': DuckDB's cast reads it as -5
    "DOUBLE": "NOT regexp_full_match({v}, '[+-]?0[0-9].*') AND NOT contains({v}, '+-') AND "
              "isfinite(TRY_CAST({v} AS DOUBLE))",
    "BOOLEAN": "lower({v}) IN ('true', 'false')",
    "DATE": "regexp_full_match({v}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}') AND "
            "TRY_CAST({v} AS DATE) IS NOT NULL",
    "TIMESTAMP": "regexp_full_match({v}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}[ T][0-9]{{2}}:"
                 "[0-9]{{2}}(:[0-9]{{2}}([.][0-9]+)?)?') AND TRY_CAST({v} AS TIMESTAMP) IS NOT NULL",
}


_SEPARATORS = (",", ".", "'", "_", " ")


__all__ = ["CsvExtractor", "resolve_input", "SOURCE_SHA"]
