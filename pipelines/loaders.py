"""``WarehouseLoader``: a stage's table written into ``<state dir>/warehouse.duckdb``,
idempotently, with lineage.

    stages:
      - name: load
        type: loader
        class: pipelines.WarehouseLoader
        config: {table: deaths, key: [sa2_code, year]}

Every row gets ``_run_id`` (the run that loaded it) and ``_source_sha256``
(the input file's SHA-256: the input table's own column when it has one, as
:class:`~pipelines.extractors.CsvExtractor` gives it, else the run's input
file's).  With ``key``, the load replaces: in one transaction it deletes the
warehouse rows whose key it is about to insert, and the rows an earlier load
of the same file left, then inserts.  Loading the same file twice leaves the
same rows; a corrected file replaces the rows it covers and keeps the others.
Without ``key`` the table is replaced as a whole.  Columns the input has and
the table lacks are added.
"""

from __future__ import annotations

from typing import Any, Sequence

from .context import quote
from .errors import ConfigError, StageError
from .extractors import SOURCE_SHA
from .sqltext import sql_literal

RUN_ID = "_run_id"
_UNSET: Any = object()


class WarehouseLoader:
    """Copy the input stage's table into the warehouse (see the module's docstring).

    Options (a YAML stage's ``config``): ``table`` (the warehouse table; required
    unless a subclass sets it), ``key`` (a column or a list of columns; none:
    replace the whole table), ``stage`` (whose table to load; default the stage
    this one depends on), ``source_table`` (which of its tables, default
    ``output``), ``exclude_columns`` (columns not to load), ``target_database``
    (another DuckDB file instead of the warehouse).  Returns ``{"table", "rows",
    "replaced", "source_sha256"}``.
    """

    table: str | None = None
    key: tuple[str, ...] | None = None
    #: columns of the input never loaded (``_run_id`` is always recomputed)
    exclude: tuple[str, ...] = ()

    def __init__(self, table: str | None = None, key: Any = _UNSET,
                 target_database: str | None = None, stage: str | None = None,
                 source_table: str = "output", exclude_columns: Sequence[str] | None = None):
        if table is not None:
            self.table = table
        if not isinstance(self.table, str) or not self.table.strip():
            raise ConfigError(f"{type(self).__name__} needs a table option: the name of the "
                              "warehouse table to load, such as {table: deaths}")
        if key is not _UNSET:
            self.key = _columns(key, "key")
        self.exclude = (*self.exclude, *_columns(exclude_columns or (), "exclude_columns"))
        self.target_database, self.stage, self.source_table = target_database, stage, source_table

    def load(self, context: Any) -> dict[str, Any]:
        stage = self.stage or context.input_stage()
        ref = context.output_ref(stage) if stage else None
        if not ref or ref.get("kind") != "tables":
            raise StageError(f"stage {context.stage_name!r} of pipeline {context.pipeline_name!r} "
                             f"loads a table, but its input stage {stage!r} has none")
        with context.warehouse(self.target_database) as wh:
            source = context.output_table(stage, self.source_table)
            result = self._write_txn(wh, source, context.run_id, context.input_sha256)
        context.log.info("warehouse_loaded", table=self.table, **result)
        return {"table": self.table, **result}

    def _write_txn(self, wh: Any, source: str, run_id: str, input_sha: str | None) -> dict[str, Any]:
        described = [r[0] for r in wh.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
        skip = {c.lower() for c in (*self.exclude, RUN_ID)}
        cols = [c for c in described if c.lower() not in skip]
        missing = [k for k in self.key or () if k.lower() not in {c.lower() for c in cols}]
        if missing:
            raise ConfigError(f"warehouse table {self.table!r}: key column(s) "
                              f"{', '.join(missing)} are not columns of the loaded table "
                              f"(its columns: {', '.join(cols)}); fix the loader's key option")
        sha = "NULL::VARCHAR" if input_sha is None else sql_literal(input_sha)
        lineage = "" if SOURCE_SHA in cols else f", {sha} AS {SOURCE_SHA}"
        select = (f"SELECT {', '.join(quote(c) for c in cols)}{lineage}, "
                  f"{sql_literal(run_id)} AS {RUN_ID} FROM {source}")
        src = f"({select})"
        target = quote(self.table)
        wh.begin()
        try:
            replaced = 0
            if self.key is None:
                exists = wh.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = "
                                    "'main' AND table_name = $t AND database_name = "
                                    "current_database()", {"t": self.table}).fetchone()[0]
                if exists:
                    replaced = wh.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
                wh.execute(f"CREATE OR REPLACE TABLE {target} AS {select}")
            else:
                wh.execute(f"CREATE TABLE IF NOT EXISTS {target} AS {select} LIMIT 0")
                self._add_missing_columns_txn(wh, src, target)
                on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in self.key)
                replaced = wh.execute(f"DELETE FROM {target} AS t USING {src} AS s WHERE {on}"
                                      ).fetchone()[0]
                replaced += wh.execute(
                    f"DELETE FROM {target} WHERE {SOURCE_SHA} IN "
                    f"(SELECT DISTINCT {SOURCE_SHA} FROM {src})").fetchone()[0]
                wh.execute(f"INSERT INTO {target} BY NAME {select}")
            rows, hashes = wh.execute(
                f"SELECT count(*), list(DISTINCT {SOURCE_SHA} ORDER BY {SOURCE_SHA}) FROM {src}"
            ).fetchone()
            wh.commit()
        except BaseException:
            wh.rollback()
            raise
        return {"rows": rows, "replaced": replaced, "source_sha256": hashes}

    def _add_missing_columns_txn(self, wh: Any, source: str, target: str) -> None:
        have = {r[0].lower() for r in wh.execute(f"DESCRIBE {target}").fetchall()}
        for name, type_, *_ in wh.execute(f"DESCRIBE SELECT * FROM {source}").fetchall():
            if name.lower() not in have:
                wh.execute(f"ALTER TABLE {target} ADD COLUMN {quote(name)} {type_}")


def _columns(value: Any, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{what} {value!r} must be a column name or a list of column names")
    if what == "key" and not value:
        raise ConfigError("key [] names no column; name the columns that identify a row, or "
                          "leave key out to replace the whole table at each load")
    return tuple(value)


__all__ = ["WarehouseLoader", "RUN_ID", "SOURCE_SHA", "sql_literal"]
