"""Stage classes for bench/latency.py (imported by the daemon's worker processes).

``Touch`` is the one stage of the latency pipeline: it only looks at the file,
so the daemon is idle again soon after each ``run.started``.  The other four
make the throughput pipeline: trivial, but each one real DuckDB work in its
worker, as a small production pipeline would do.
"""

from __future__ import annotations

from typing import Any


class Touch:
    def extract(self, context: Any) -> Any:
        return {"bytes": context.input_file.stat().st_size}


class CsvExtract:
    def extract(self, context: Any) -> Any:
        return context.sql("SELECT * FROM read_csv(?, header = true)", [str(context.input_file)])


class Transform:
    def transform(self, context: Any) -> Any:
        table = context.output_table("extract")
        return context.sql(f"SELECT id, value, value * 2 AS doubled, upper(label) AS label FROM {table}")


class Validate:
    def validate(self, context: Any) -> list[str]:
        table = context.output_table("transform")
        bad = context.duckdb.execute(
            f"SELECT count(*) FROM {table} WHERE id IS NULL OR doubled <> value * 2").fetchone()[0]
        return [f"{bad} row(s) fail the check"] if bad else []


class Load:
    def load(self, context: Any) -> Any:
        table = context.output_table("validate")
        return context.sql(f"SELECT count(*) AS rows, sum(value) AS total, max(label) AS last FROM {table}")
