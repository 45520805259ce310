"""The bundled loader: a stage's table written into ``<state dir>/warehouse.duckdb``.

Idempotent (a run's rows replace those of the same key, or the whole table),
with lineage columns ``_run_id`` and ``_source_sha256`` on every row.
"""

from __future__ import annotations

from typing import Any

from pipelines import StageError, quote

from .common import PARSE_ERRORS, RUN_ID, SOURCE_SHA


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class WarehouseLoader:
    """Copy the validated table into ``<state dir>/warehouse.duckdb``, idempotently.

    ``key`` columns name what a row is about (an SA2; an area, year and sex):
    in one transaction the loader deletes the rows with the keys it is about
    to insert, and any rows of the same source file, then inserts, adding
    ``_run_id``.  Loading the same file twice leaves the same rows; a
    corrected file replaces the rows it covers and leaves the others.  With
    ``key = None`` the table is replaced as a whole.
    """

    table: str
    key: tuple[str, ...] | None = None

    def __init__(self, target_database: str | None = None, table: str | None = None):
        self.target_database = target_database
        if table is not None:
            self.table = table

    def load(self, context: Any) -> dict[str, Any]:
        stage = context.input_stage()
        ref = context.output_ref(stage) if stage else None
        if not ref or ref.get("kind") != "tables":
            raise StageError(f"stage {context.stage_name!r} of pipeline {context.pipeline_name!r} "
                             f"loads a table, but its input stage {stage!r} has none")
        path = context.output_path(stage)
        with context.warehouse(self.target_database) as wh:
            wh.execute(f"ATTACH {sql_literal(str(path))} AS ahgd_input (READ_ONLY)")
            try:
                result = self._write_txn(wh, "ahgd_input.main.output", context.run_id)
            finally:
                wh.execute("DETACH ahgd_input")
        context.log.info("warehouse_loaded", table=self.table, **result)
        return {"table": self.table, **result}

    def _write_txn(self, wh: Any, source: str, run_id: str) -> dict[str, Any]:
        cols = [r[0] for r in wh.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
                if r[0] not in (PARSE_ERRORS, RUN_ID)]
        select = f"SELECT {', '.join(quote(c) for c in cols)}, $run_id AS {RUN_ID} FROM {source}"
        target = quote(self.table)
        wh.begin()
        try:
            replaced = 0
            if self.key is None:
                exists = wh.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = "
                                    "'main' AND table_name = $t", {"t": self.table}).fetchone()[0]
                if exists:
                    replaced = wh.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
                wh.execute(f"CREATE OR REPLACE TABLE {target} AS {select}", {"run_id": run_id})
            else:
                wh.execute(f"CREATE TABLE IF NOT EXISTS {target} AS {select} LIMIT 0",
                           {"run_id": run_id})
                self._add_missing_columns_txn(wh, source, target)
                on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in self.key)
                replaced = wh.execute(f"DELETE FROM {target} AS t USING {source} AS s WHERE {on}"
                                      ).fetchone()[0]
                replaced += wh.execute(
                    f"DELETE FROM {target} WHERE {SOURCE_SHA} IN "
                    f"(SELECT DISTINCT {SOURCE_SHA} FROM {source})").fetchone()[0]
                wh.execute(f"INSERT INTO {target} BY NAME {select}", {"run_id": run_id})
            rows, hashes = wh.execute(
                f"SELECT count(*), list(DISTINCT {SOURCE_SHA} ORDER BY {SOURCE_SHA}) FROM {source}"
            ).fetchone()
            wh.commit()
        except BaseException:
            wh.rollback()
            raise
        return {"rows": rows, "replaced": replaced, "source_sha256": hashes}

    def _add_missing_columns_txn(self, wh: Any, source: str, target: str) -> None:
        have = {r[0] for r in wh.execute(f"DESCRIBE {target}").fetchall()}
        for name, type_, *_ in wh.execute(f"DESCRIBE SELECT * FROM {source}").fetchall():
            if name not in have and name != PARSE_ERRORS:
                wh.execute(f"ALTER TABLE {target} ADD COLUMN {quote(name)} {type_}")

