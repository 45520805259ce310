"""Pipelines for the executor contract and the scale-out tests (importable on Dask workers:
the workers get the repository on PYTHONPATH)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from pipelines import BasePipeline, StageConfig


def mark(path: str | None, text: str) -> None:
    """Append a line to a side-effect marker file: how a test counts executions."""
    if path:
        with open(path, "a") as f:
            f.write(f"{text} pid={os.getpid()} host={socket.gethostname()}\n")
            f.flush()
            os.fsync(f.fileno())


class Behaving(BasePipeline):
    """One stage, ``work``, doing what ``context.params["do"]`` says."""

    def define_stages(self):
        return ["work"]

    def execute_stage(self, stage_name, context):
        do = context.params.get("do", "rows")
        mark(context.params.get("marker"), f"start {context.run_id} a{context.attempt}")
        if do == "rows":
            return context.sql(f"SELECT range AS n FROM range({int(context.params.get('n', 5))})")
        if do == "fail":
            raise RuntimeError("the stage failed on purpose")
        if do == "sleep":
            # seconds_a<N>: how long attempt N sleeps, when it differs from the others
            time.sleep(float(context.params.get(f"seconds_a{context.attempt}",
                                                context.params.get("seconds", 30))))
            mark(context.params.get("marker"), f"end {context.run_id} a{context.attempt}")
            return {"slept": True}
        if do == "exit":
            os._exit(3)
        if do == "warehouse":
            with context.warehouse() as con:
                con.execute("CREATE OR REPLACE TABLE t AS SELECT 1 AS x")
            return {"rows": 1}
        raise ValueError(f"unknown behaviour {do!r}")


class TwoStages(BasePipeline):
    """``make`` a table, then ``count`` it (reading the first stage's output)."""

    def define_stages(self):
        return ["make", "count"]

    def execute_stage(self, stage_name, context):
        if stage_name == "make":
            mark(context.params.get("marker"), f"make {context.run_id} a{context.attempt}")
            pause = float(context.params.get("pause", 0))
            if pause:
                time.sleep(pause)
            return context.sql("SELECT range AS n, range * 2 AS twice FROM range(100)")
        return context.sql(f"SELECT count(*) AS rows, sum(twice) AS total "
                           f"FROM {context.output_table('make')}")


class HeldTwoStages(TwoStages):
    """:class:`TwoStages` whose ``count``, on attempt 1, first marks ``marker`` and waits while
    the file ``hold`` exists (at most 120 s) before it reads ``make``'s output."""

    def execute_stage(self, stage_name, context):
        if stage_name == "count":
            mark(context.params.get("marker"), f"count {context.run_id} a{context.attempt}")
            hold = context.params.get("hold")
            held = time.monotonic() + 120
            while context.attempt == 1 and hold and os.path.exists(hold) \
                    and time.monotonic() < held:
                time.sleep(0.05)
        return super().execute_stage(stage_name, context)


def behaving(state_dir: Path, **kw) -> Behaving:
    return Behaving("behaving", state_dir=state_dir, max_retries=0,
                    stage_configs={"work": StageConfig("work", retry_attempts=0, **kw)})


class MarkedTransformer:
    """A YAML transformer that marks each execution in ``marker`` (an absolute path: the
    Dask workers on loopback share this machine's disk) and takes ``sleep`` seconds.  With
    ``hold`` (a path), attempt 1 first waits while that file exists (at most 120 s): it runs
    until the test removes the file, or something stops it."""

    def __init__(self, marker: str, sleep: float = 0.0, hold: str | None = None):
        self.marker, self.sleep, self.hold = marker, sleep, hold

    def transform(self, context):
        mark(self.marker, f"start {context.run_id} a{context.attempt}")
        if self.hold and context.attempt == 1:
            held = time.monotonic() + 120
            while os.path.exists(self.hold) and time.monotonic() < held:
                time.sleep(0.05)
        deadline = time.monotonic() + self.sleep
        while time.monotonic() < deadline:
            time.sleep(0.05)
        mark(self.marker, f"end {context.run_id} a{context.attempt}")
        return context.sql(f"SELECT *, 1 AS seen FROM {context.output_table('extract')}")


def set_claim_late(seconds: float, dask_worker=None) -> float:
    """Run on each Dask worker (``client.run``): how long its claims wait for their token
    (``remote.CLAIM_LATE_S``) becomes ``seconds``; what it was before."""
    from pipelines.execution import remote

    before = getattr(remote, "CLAIM_LATE_S", seconds)
    remote.CLAIM_LATE_S = seconds
    return before
