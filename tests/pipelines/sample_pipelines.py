"""Pipelines used by the framework tests, importable by worker processes.

Stages leave traces in files under ``<state_dir>/trace/`` so that tests can
count real executions across processes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pipelines import BasePipeline, StageConfig


def trace(ctx: Any, stage: str, **extra: Any) -> None:
    d = Path(ctx.state_dir) / "trace"
    d.mkdir(exist_ok=True)
    record = {"stage": stage, "attempt": ctx.attempt, "pid": os.getpid(), "t": time.time(), **extra}
    with open(d / "executions.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def output_in_a_fresh_worker(pipeline: Any, stage: str) -> Any:
    """Run ``pipeline`` on a pool of one worker started now (so it sees the environment as it
    is now), close both, and return ``stage``'s output; the run must complete."""
    from pipelines.execution.pool import ProcessExecutor
    from state import RunState

    executor = ProcessExecutor(1)
    try:
        run = pipeline.run(executor=executor)
        assert run.state == RunState.COMPLETED, run.error
        return run.get_output(stage)
    finally:
        executor.shutdown()
        pipeline.close()


def fail_if_flagged(ctx: Any, stage: str) -> None:
    """Raise once while ``<state_dir>/fail-<stage>`` exists (the flag is removed): a test stops a
    run at ``stage`` after the stages before it completed."""
    flag = Path(ctx.state_dir) / f"fail-{stage}"
    if flag.exists():
        flag.unlink()
        raise RuntimeError(f"{stage} fails once, on purpose")


def executions(state_dir: Path) -> list[dict]:
    p = Path(state_dir) / "trace" / "executions.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


class FlakyPipeline(BasePipeline):
    """4 stages; the third fails ``failures`` times before it succeeds."""

    def __init__(self, name: str = "flaky", *, failures: int = 2, **kw: Any):
        kw.setdefault("retry_delay", 0.01)
        super().__init__(name, **kw)
        self.failures = failures

    def define_stages(self) -> list[str]:
        return ["extract", "transform", "validate", "load"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        trace(context, stage_name)
        if stage_name == "extract":
            return context.sql("SELECT range AS n, range * 10 AS v FROM range(100)")
        if stage_name == "transform":
            return context.sql(f"SELECT n, v + 1 AS v FROM {context.output_table('extract')}")
        if stage_name == "validate":
            tries = [e for e in executions(context.state_dir) if e["stage"] == "validate"]
            if len(tries) <= self.failures:
                raise RuntimeError(f"flaky failure {len(tries)}")
            return context.passthrough("transform")
        total = context.get_output("validate").aggregate("sum(v)").fetchall()[0][0]
        return {"total": int(total)}


class SleepyPipeline(BasePipeline):
    """One stage that sleeps; its worker pid is traced so the test can check it died."""

    def __init__(self, name: str = "sleepy", *, seconds: float = 30.0, **kw: Any):
        super().__init__(name, **kw)
        self.seconds = seconds

    def define_stages(self) -> list[str]:
        return ["nap"]  # one stage

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        trace(context, stage_name)
        time.sleep(self.seconds)
        return "woke up"


class CrashingPipeline(BasePipeline):
    """A DAG where stage ``crash`` calls os._exit(1) and ``fine`` does not depend on it."""

    def define_stages(self) -> list[str]:
        return ["fine", "crash", "after"]

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        return {"after": {"fine", "crash"}}.get(stage_name, set())

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        trace(context, stage_name)
        if stage_name == "crash":
            os._exit(1)
        if stage_name == "fine":
            time.sleep(0.5)
        return stage_name


class DiamondPipeline(BasePipeline):
    """a -> (b, c) -> d, each stage sleeping; used to see real overlap."""

    def __init__(self, name: str = "diamond", *, nap: float = 0.6, **kw: Any):
        super().__init__(name, **kw)
        self.nap = nap

    def define_stages(self) -> list[str]:
        return ["a", "b", "c", "d"]

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        return {"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}}[stage_name]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        start = time.time()
        time.sleep(self.nap)
        trace(context, stage_name, start=start, end=time.time())
        return stage_name


class RulePipeline(BasePipeline):
    """One stage producing a table, checked by the rules given."""

    def __init__(self, name: str = "rules", *, rules: dict, sql: str, **kw: Any):
        kw.setdefault("stage_configs", {"make": StageConfig("make", validation_rules=rules, retry_attempts=0)})
        super().__init__(name, **kw)
        self.sql = sql

    def define_stages(self) -> list[str]:
        return ["make"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return context.sql(self.sql)


class ReturnsPipeline(BasePipeline):
    """One stage returning whatever ``make_value`` (a module-level function name) builds."""

    def __init__(self, name: str = "returns", *, kind: str, **kw: Any):
        kw.setdefault("max_retries", 0)
        super().__init__(name, **kw)
        self.kind = kind

    def define_stages(self) -> list[str]:
        return ["make", "use"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "use":
            return {"got": repr(type(context.get_output("make")).__name__)}
        return VALUES[self.kind](context)


class LoadOrderPipeline(BasePipeline):
    """``work`` sleeps for the run's ``params["sleep"]`` seconds; ``load`` traces the run."""

    def __init__(self, name: str = "loadorder", **kw: Any):
        kw.setdefault("max_retries", 0)
        super().__init__(name, **kw)

    def define_stages(self) -> list[str]:
        return ["work", "load"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "work":
            time.sleep(float(context.params.get("sleep", 0)))
        trace(context, stage_name, run_id=context.run_id)
        return None


class OrderPipeline(BasePipeline):
    """``make`` returns a mapping whose key order is not alphabetical; ``use`` reports the
    order it received, so a resumed run shows whether the order survived the event log."""

    def __init__(self, name: str = "order", *, size: int = 4, **kw: Any):
        kw.setdefault("max_retries", 0)
        super().__init__(name, **kw)
        self.size = size

    def define_stages(self) -> list[str]:
        return ["make", "use"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "make":
            keys = [f"k{i:05d}" for i in reversed(range(self.size))]
            return {"columns": {k: "VARCHAR" for k in keys}, "nested": {"z": {"y": 1, "b": 2}}}
        made = context.get_output("make")
        return {"columns": list(made["columns"]), "nested": list(made["nested"]["z"])}


def _arrow(ctx: Any) -> Any:
    import pyarrow as pa

    return pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})


def _pandas(ctx: Any) -> Any:
    import pandas as pd

    return pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})


VALUES = {
    "relation": lambda ctx: ctx.sql("SELECT 1 AS a UNION ALL SELECT 2"),
    "arrow": _arrow,
    "pandas": _pandas,
    "json": lambda ctx: {"numbers": list(range(5)), "name": "x"},
    "big_json": lambda ctx: {"numbers": list(range(20000))},
    "pickle": lambda ctx: {1, 2, 3},
    "none": lambda ctx: None,
    "tables": lambda ctx: {"first": ctx.sql("SELECT 1 AS a"), "second": ctx.sql("SELECT 2 AS b")},
    "generator": lambda ctx: (i for i in range(3)),
}


class DyingPipeline(BasePipeline):
    """One stage that dies the way ``how`` says; a sibling stage that does not."""

    def __init__(self, name: str = "dying", *, how: str, **kw: Any):
        kw.setdefault("max_retries", 0)
        kw.setdefault("parallel_stages", True)
        kw.setdefault("max_workers", 2)
        super().__init__(name, **kw)
        self.how = how

    def define_stages(self) -> list[str]:
        return ["sibling", "victim"]

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        return set()

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "sibling":
            time.sleep(0.3)
            return "alive"
        if self.how == "segfault":
            import ctypes

            ctypes.string_at(0)  # reads address 0: SIGSEGV
        if self.how == "sigkill":  # what the kernel's OOM killer does
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if self.how == "memory":
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (1 << 30, hard))  # 1 GiB of address space
            try:
                hog = bytearray(4 << 30)  # 4 GiB: MemoryError
                return len(hog)
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        return "unreachable"
