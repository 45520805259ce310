"""Stage classes for the daemon tests (imported by worker processes).

Every execution appends a line to ``<state dir>/trace/executions.jsonl`` so a
test can count real executions across daemon restarts and kills.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _trace(context: Any, stage: str, event: str, **extra: Any) -> None:
    d = Path(context.state_dir) / "trace"
    d.mkdir(exist_ok=True)
    line = {"run_id": context.run_id, "stage": stage, "attempt": context.attempt, "event": event,
            "pid": os.getpid(), "t": time.time(), **extra}
    with open(d / "executions.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


class CsvExtractor:
    def __init__(self, sleep: float = 0.0, required: list[str] | None = None):
        self.sleep = sleep
        self.required = required or []

    def extract(self, context: Any) -> Any:
        _trace(context, "extract", "start")
        time.sleep(self.sleep)
        path = context.input_file
        if path is None:
            raise ValueError("this pipeline needs an input file")
        rel = context.sql("SELECT * FROM read_csv(?, header = true, all_varchar = true)", [str(path)])
        missing = [c for c in self.required if c not in rel.columns]
        if missing:
            from pipelines.errors import ValidationFailed

            raise ValidationFailed(f"missing columns: {', '.join(missing)}")
        _trace(context, "extract", "done")
        return rel


class SlowTransformer:
    def __init__(self, sleep: float = 0.0):
        self.sleep = sleep

    def transform(self, context: Any) -> Any:
        _trace(context, "transform", "start")
        deadline = time.monotonic() + self.sleep
        while time.monotonic() < deadline:
            time.sleep(0.05)
        table = context.output_table("extract")
        rel = context.sql(f"SELECT *, 1 AS seen FROM {table}")
        _trace(context, "transform", "done")
        return rel


class CountLoader:
    def __init__(self, sleep: float = 0.0):
        self.sleep = sleep

    def load(self, context: Any) -> Any:
        _trace(context, "load", "start")
        time.sleep(self.sleep)
        n = context.get_output("transform").aggregate("count(*)").fetchall()[0][0]
        _trace(context, "load", "done", rows=n)
        return {"rows": n}


class Tick:
    def extract(self, context: Any) -> Any:
        _trace(context, "tick", "done", fire_time=context.params.get("fire_time"))
        return {"fire_time": context.params.get("fire_time")}


class WarehouseLoader:
    """Writes its input stage's rows to the warehouse table ``table``, tagged with the run id,
    replacing that run's earlier rows in one transaction (a stage run again after a crash does
    not load them twice); then sleeps ``sleep_after`` seconds, so a kill can land after the
    write and before the stage is recorded as completed."""

    def __init__(self, table: str = "loaded", sleep_after: float = 0.0):
        self.table, self.sleep_after = table, sleep_after

    def load(self, context: Any) -> Any:
        _trace(context, "load", "start")
        source = context.output_table(context.input_stage())
        with context.warehouse() as con:
            con.execute("BEGIN")
            con.execute(f"CREATE TABLE IF NOT EXISTS {self.table} AS "
                        f"SELECT ?::VARCHAR AS run_id, * FROM {source} LIMIT 0", [context.run_id])
            con.execute(f"DELETE FROM {self.table} WHERE run_id = ?", [context.run_id])
            con.execute(f"INSERT INTO {self.table} SELECT ?, * FROM {source}", [context.run_id])
            n = con.execute(f"SELECT count(*) FROM {self.table} WHERE run_id = ?",
                            [context.run_id]).fetchone()[0]
            con.execute("COMMIT")
        _trace(context, "load", "written", rows=n)
        self.after_write()
        _trace(context, "load", "done", rows=n)
        return {"rows": n}

    def after_write(self) -> None:
        """Between the write and the stage's end: ``sleep_after`` seconds."""
        deadline = time.monotonic() + self.sleep_after
        while time.monotonic() < deadline:
            time.sleep(0.05)
