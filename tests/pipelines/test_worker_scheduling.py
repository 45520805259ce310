"""Worker processes run as SCHED_BATCH (Linux), so the daemon's hand-offs get a core at once.

A burst measured one hand-off in ten taking ~3 ms: the daemon's thread that sends the next
attempt waited for a busy worker's time slice while holding the GIL.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from pipelines import BasePipeline

from .sample_pipelines import output_in_a_fresh_worker

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling")


class Policy(BasePipeline):
    """One stage reporting its process's scheduling policy."""

    def __init__(self, **kw: Any):
        super().__init__("policy", max_retries=0, **kw)

    def define_stages(self) -> list[str]:
        return ["look"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return {"policy": os.sched_getscheduler(0), "pid": os.getpid()}


def _policy_in_a_worker(state_dir) -> dict:
    return output_in_a_fresh_worker(Policy(state_dir=state_dir), "look")


def test_a_worker_runs_its_stages_as_a_batch_job(state_dir, monkeypatch):
    monkeypatch.delenv("AHGD_WORKER_BATCH", raising=False)
    seen = _policy_in_a_worker(state_dir)
    assert seen["pid"] != os.getpid()
    assert seen["policy"] == os.SCHED_BATCH
    assert os.sched_getscheduler(0) != os.SCHED_BATCH   # the calling process is left alone


def test_the_batch_policy_can_be_turned_off(state_dir, monkeypatch):
    monkeypatch.setenv("AHGD_WORKER_BATCH", "0")
    assert _policy_in_a_worker(state_dir)["policy"] == os.sched_getscheduler(0)


def test_batch_scheduling_says_what_it_did(monkeypatch):
    from pipelines.execution import worker

    monkeypatch.setenv("AHGD_WORKER_BATCH", "off")
    assert worker.batch_scheduling() == "off (AHGD_WORKER_BATCH)"
