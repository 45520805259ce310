"""A stage that segfaults, is killed like the OOM killer does, or runs out of
memory fails that attempt and nothing else."""

from __future__ import annotations

import pytest

from state import EventLog

from .sample_pipelines import DyingPipeline


@pytest.mark.parametrize("how, message", [
    ("segfault", "was killed by SIGSEGV"),
    ("sigkill", "was killed by SIGKILL (the kernel kills with SIGKILL when memory runs out)"),
    ("memory", "MemoryError"),
])
def test_a_dying_stage_fails_alone(state_dir, how, message):
    p = DyingPipeline(state_dir=state_dir, how=how)
    ctx = p.run()
    assert ctx.state == "FAILED"
    assert ctx.failed_stage == "victim"
    assert message in ctx.error
    assert ctx.stage_results["sibling"].state == "COMPLETED"
    assert ctx.get_output("sibling") == "alive"
    again = p.run()  # the pool replaced the dead worker; the pipeline object is fine
    assert again.stage_results["sibling"].state == "COMPLETED"
    with EventLog.open(state_dir) as log:
        assert log.check().ok
