"""``run_history.duration_s`` is the time a run spent running: the sum of its executions, not
the hours it sat FAILED before ``ahgd retry``, nor the time a crashed daemon was down.
``started_at`` stays its first start; ``last_started_at`` is the start of its latest one."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from typing import Any

import pytest

from state import parse_ts

from .harness import Daemon, ahgd_exe, env, query, wait_until


class Held:
    """A transformer that waits while the file ``hold`` exists (at most 60 s): the test kills
    the daemon mid-stage however slow the host, then removes ``hold`` for the restart."""

    def __init__(self, hold: str):
        self.hold = hold

    def transform(self, context: Any) -> Any:
        deadline = time.monotonic() + 60
        while os.path.exists(self.hold) and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"held": True}


def _ahgd(*args):
    return subprocess.run([*ahgd_exe(), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env())


def _master(tmp, stage: str) -> object:
    (tmp / "p.yaml").write_text(textwrap.dedent(f"""\
        pipeline: {{name: p}}
        stages:
          - {stage}
        """))
    master = tmp / "master.yaml"
    master.write_text("pipelines:\n  - {name: p, config_file: p.yaml}\n"
                      "daemon: {max_workers: 1, shutdown_grace: PT5S}\n")
    return master


def _events(state, run_id):
    proc = _ahgd("events", "--run", run_id, "--json", "--state-dir", state)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _history(state):
    proc = _ahgd("history", "--json", "--state-dir", state)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    return row


def _seconds(a: str, b: str) -> float:
    return (parse_ts(b) - parse_ts(a)).total_seconds()


def test_a_run_retried_by_hand_counts_its_executions_not_the_wait(tmp_path):
    master, state = _master(tmp_path, "{name: extract, type: extractor, class: "
                                      "tests.daemon.toggle_stages.FailUntilFlag, config: "
                                      "{sleep: 0.2}, retry_attempts: 0}"), tmp_path / "state"
    assert _ahgd("run", "p", "--config", master, "--state-dir", state).returncode == 1
    time.sleep(2)                                   # the run sits FAILED
    (state / "ok").write_text("")
    run_id = _history(state)["run_id"]
    proc = _ahgd("retry", run_id, "--config", master, "--state-dir", state)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = _events(state, run_id)
    starts = [e["ts"] for e in events if e["type"] == "run.started"]
    ends = [e["ts"] for e in events if e["type"] in ("run.failed", "run.completed")]
    assert len(starts) == len(ends) == 2
    running = _seconds(starts[0], ends[0]) + _seconds(starts[1], ends[1])
    row = _history(state)
    assert row["duration_s"] == pytest.approx(running, abs=0.002)
    assert _seconds(row["started_at"], row["ended_at"]) - row["duration_s"] > 1.9  # the wait
    assert (row["started_at"], row["last_started_at"], row["ended_at"]) == (
        starts[0], starts[1], ends[1])
    assert row["retries"] == 1 and row["state"] == "COMPLETED"


def test_a_run_cut_short_by_a_crash_counts_up_to_its_last_recorded_event(tmp_path):
    # the stage waits while `hold` exists, not for a fixed 1.5 s that a loaded host could use
    # up before the kill: it is still running when the daemon dies, and ends on the restart
    hold = tmp_path / "hold"
    hold.touch()
    master, state = _master(tmp_path, "{name: nap, type: transformer, class: "
                                      "tests.daemon.test_run_duration.Held, config: "
                                      f'{{hold: "{hold}"}}, retry_attempts: 0}}'), tmp_path / "state"
    d = Daemon(master, state).wait_ready()
    try:
        proc = _ahgd("run", "p", "--no-wait", "--state-dir", state)
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: query(state, "SELECT 1 FROM events WHERE type = 'stage.started'"), 30,
                   "the stage to start")
        time.sleep(0.3)
    finally:
        d.kill()                                    # SIGKILL mid-stage
        hold.unlink()
    time.sleep(2)                                   # the daemon is down
    d = Daemon(master, state).wait_ready()
    try:
        wait_until(lambda: query(state, "SELECT 1 FROM runs WHERE state = 'COMPLETED'"), 60,
                   "the recovered run to complete")
    finally:
        assert d.stop() == 0
    run_id = _history(state)["run_id"]
    events = _events(state, run_id)
    types = [e["type"] for e in events]
    assert types.count("run.started") == 2 and "run.recovered" in types
    first, recovered = types.index("run.started"), types.index("run.recovered")
    before_crash = [e for e in events[first:recovered] if e["type"] != "stage.interrupted"][-1]
    assert before_crash["type"] == "stage.started"
    second = events[types.index("run.started", first + 1)]
    running = (_seconds(events[first]["ts"], before_crash["ts"])
               + _seconds(second["ts"], events[-1]["ts"]))
    row = _history(state)
    assert events[-1]["type"] == "run.completed"
    assert row["duration_s"] == pytest.approx(running, abs=0.002)
    assert _seconds(row["started_at"], row["ended_at"]) - row["duration_s"] > 1.9  # the downtime
    assert row["last_started_at"] == second["ts"] and row["recoveries"] == 1

