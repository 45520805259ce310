"""An in-process run of one stage at a time executes each attempt on the engine's own thread.

Handing every attempt to a pool thread and waiting for it back cost ~0.15 ms a
stage (issue 18); a thread can no more be stopped or timed out than the
caller.  What must not change: the attempt's context variables stay its own,
``get_progress()`` shows the stage running while it runs, the thread's warm
DuckDB instance goes when the run ends (as a pool thread's did), and Ctrl-C in
a stage stops the run at once, leaving nothing of the attempt on disk.
"""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path

import pytest

from pipelines import BasePipeline, attemptdb

VAR = contextvars.ContextVar("ahgd_test_inline", default="unset")


class Probe(BasePipeline):
    def define_stages(self):
        return ["a", "b", "c"]

    def execute_stage(self, stage_name, context):
        seen = {"thread": threading.get_ident(), "var": VAR.get(),
                "progress": self.get_progress()["stages"][stage_name]["state"]}
        VAR.set(stage_name)
        if stage_name == "b":  # a table: the attempt's DuckDB file, on the thread's warm instance
            return context.sql("SELECT 1 AS x")
        return seen


class CtrlC(BasePipeline):
    def define_stages(self):
        return ["a", "b"]

    def execute_stage(self, stage_name, context):
        if stage_name == "b":
            context.sql("CREATE TABLE t AS SELECT 1 AS x")  # the attempt's file exists now
            raise KeyboardInterrupt
        return context.sql("SELECT 1 AS x")


def test_in_process_attempts_run_on_the_calling_thread_each_in_its_own_context(tmp_path: Path):
    probe = Probe("probe", state_dir=tmp_path, executor="inprocess")
    warm = attemptdb.warm_instance()  # this thread's, from an earlier test, or None
    ctx = probe.run()
    assert ctx.state == "COMPLETED", ctx.error
    for stage in ("a", "c"):
        seen = ctx.get_output(stage)
        assert seen["thread"] == threading.get_ident(), stage
        assert seen["var"] == "unset", stage        # nothing one attempt set reached the next
        assert seen["progress"] == "RUNNING", stage  # get_progress() saw it running
    assert VAR.get() == "unset"                      # nor the caller
    assert attemptdb.warm_instance() in (None, warm)  # none made by the run outlives it


def test_ctrl_c_in_an_in_process_stage_stops_the_run_and_leaves_no_attempt_file(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        CtrlC("ctrlc", state_dir=tmp_path, executor="inprocess").run()
    data = tmp_path / "data"
    assert list(data.rglob("a-a1.*")), "stage a's recorded output should stay"
    assert not list(data.rglob("b-a1.*")), "the interrupted attempt was never recorded"
