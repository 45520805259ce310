"""Stage classes for the recovery-verification daemon tests (imported by worker processes)."""

from __future__ import annotations

import time
from typing import Any


class ValuesExtractor:
    """The input CSV (``code``, ``value``) as a table: the output a later test damages."""

    def extract(self, context: Any) -> Any:
        return context.sql("SELECT code, CAST(value AS DOUBLE) AS value FROM "
                           "read_csv(?, header = true, all_varchar = true)",
                           [str(context.input_file)])


class DoublingTransformer:
    """Every value doubled.  Its first attempt waits ``sleep`` seconds first: the time for a
    test to kill the daemon while this stage runs."""

    def __init__(self, sleep: float = 0.0):
        self.sleep = sleep

    def transform(self, context: Any) -> Any:
        if context.attempt == 1:
            deadline = time.monotonic() + self.sleep
            while time.monotonic() < deadline:
                time.sleep(0.05)
        table = context.output_table("extract")
        return context.sql(f"SELECT code, value * 2 AS doubled FROM {table}")


class RowCounter:
    def load(self, context: Any) -> Any:
        table = context.output_table("transform")
        return {"rows": context.duckdb.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]}
