"""Pipelines and stage classes for the orchestrator tests, importable by worker processes.

``StepPipeline`` is one stage that naps and then succeeds or fails; every
execution appends a line to ``<state_dir>/trace/orch.jsonl`` so tests can
count real executions across processes.  The ``*Extractor`` / ``*Transformer``
/ ``*Loader`` classes are what YAML pipeline files name in ``class:``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pipelines import BasePipeline


def record(state_dir: Path | str, **entry: Any) -> None:
    """Append one execution record (one short line: appends from several processes stay whole)."""
    d = Path(state_dir) / "trace"
    d.mkdir(exist_ok=True)
    with open(d / "orch.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "t": time.time(), **entry}) + "\n")


def records(state_dir: Path | str) -> list[dict]:
    p = Path(state_dir) / "trace" / "orch.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def executions_of(state_dir: Path | str, pipeline: str) -> int:
    return sum(1 for r in records(state_dir) if r.get("pipeline") == pipeline)


class StepPipeline(BasePipeline):
    """One stage ``work`` that naps ``nap`` seconds, then fails the first ``fail_times`` runs.

    ``fail_times=-1`` fails every run.  Stage retries are off (``max_retries=0``)
    so that only the orchestrator's ``retry_policy`` repeats a pipeline.
    """

    def __init__(self, name: str, *, nap: float = 0.0, fail_times: int = 0, **kw: Any):
        kw.setdefault("max_retries", 0)
        super().__init__(name, **kw)
        self.nap = nap
        self.fail_times = fail_times

    def define_stages(self) -> list[str]:
        return ["work"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        before = executions_of(context.state_dir, self.name)
        record(context.state_dir, pipeline=self.name, stage=stage_name)
        time.sleep(self.nap)
        if self.fail_times < 0 or before < self.fail_times:
            raise RuntimeError(f"{self.name} broke on execution {before + 1}")
        return {"pipeline": self.name, "execution": before + 1}


# --------------------------------------------------------------------------- YAML stage classes


class CsvExtractor:
    """Reads the run's input file (``input_file``) into a table."""

    def __init__(self, delimiter: str = ","):
        self.delimiter = delimiter

    def extract(self, context: Any) -> Any:
        record(context.state_dir, pipeline=context.pipeline_name, stage=context.stage_name,
               options={"delimiter": self.delimiter})
        return context.sql("SELECT * FROM read_csv(?, header = true, delim = ?)",
                           params=[str(context.input_file), self.delimiter])


class ScaleTransformer:
    """Multiplies ``column`` of the input stage's table by ``factor``."""

    def __init__(self, column: str, factor: float):
        self.column = column
        self.factor = factor

    def transform(self, context: Any) -> Any:
        record(context.state_dir, pipeline=context.pipeline_name, stage=context.stage_name)
        col = '"' + self.column.replace('"', '""') + '"'
        source = context.output_table(context.input_stage())
        return context.sql(f"SELECT * REPLACE ({col} * ? AS {col}) FROM {source}",
                           params=[self.factor])


class NapTransformer:
    """Passes its input through after ``seconds``, recording when it started and ended."""

    def __init__(self, seconds: float = 0.3):
        self.seconds = seconds

    def transform(self, context: Any) -> Any:
        start = time.time()
        time.sleep(self.seconds)
        record(context.state_dir, pipeline=context.pipeline_name, stage=context.stage_name,
               start=start, end=time.time())
        return context.passthrough(context.input_stage())


class TableLoader:
    """Writes the input stage's table to ``table`` in the state directory's warehouse."""

    def __init__(self, table: str):
        self.table = table

    def load(self, context: Any) -> dict:
        record(context.state_dir, pipeline=context.pipeline_name, stage=context.stage_name)
        rows = context.get_output(context.input_stage()).fetchall()
        name = '"' + self.table.replace('"', '""') + '"'
        with context.warehouse() as con:
            con.execute(f"CREATE OR REPLACE TABLE {name} (sa2_code VARCHAR, deaths DOUBLE)")
            con.executemany(f"INSERT INTO {name} VALUES (?, ?)",
                            [(str(r[0]), float(r[1])) for r in rows])
        return {"table": self.table, "rows": len(rows)}


class MarkLoader:
    """Records that it ran; for stages that must (or must not) run."""

    def load(self, context: Any) -> str:
        record(context.state_dir, pipeline=context.pipeline_name, stage=context.stage_name)
        return "marked"


class SleepExtractor:
    """Sleeps ``seconds`` (a stage to time out), recording its worker's pid first."""

    def __init__(self, seconds: float = 30.0):
        self.seconds = seconds

    def extract(self, context: Any) -> str:
        record(context.state_dir, pipeline=context.pipeline_name, stage=context.stage_name)
        time.sleep(self.seconds)
        return "woke up"


class ValueExtractor:
    """Returns ``value`` (a small pipeline for orchestrated YAML runs)."""

    def __init__(self, value: Any = 1, fail: bool = False):
        self.value = value
        self.fail = fail

    def extract(self, context: Any) -> Any:
        record(context.state_dir, pipeline=context.pipeline_name, stage=context.stage_name)
        if self.fail:
            raise RuntimeError(f"{context.pipeline_name} has no data")
        return {"value": self.value}
