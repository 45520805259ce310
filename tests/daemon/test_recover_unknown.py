"""A run the daemon cannot resume: a script's Python pipeline, killed while it ran on the
daemon's state directory.  The daemon closes it as FAILED, saying why and how to resume it,
instead of making it PENDING for a pipeline it does not have (where it waited for ever)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from state import EventLog

from .harness import Daemon, ahgd_exe, env, query, wait_until, write_config

SCRIPT = textwrap.dedent("""\
    import sys, time
    from pipelines import BasePipeline

    class PySlow(BasePipeline):
        def define_stages(self):
            return ["first", "second"]

        def execute_stage(self, stage_name, context):
            if stage_name == "second" and sys.argv[2] == "slow":
                time.sleep(120)
            return {"stage": stage_name}

    p = PySlow("pyslow", state_dir=sys.argv[1], executor="inprocess")
    if len(sys.argv) > 3:
        ctx = p.retry(sys.argv[3])
    else:
        ctx = p.run()
    print(ctx.state)
    """)


def test_the_daemon_closes_a_killed_scripts_run_of_a_pipeline_it_does_not_have(tmp_path):
    state = tmp_path / "state"
    script = tmp_path / "pyslow.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(state), "slow"], env=env(),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (state / "history.db").exists() and query(
            state, "SELECT 1 FROM stage_runs WHERE stage = 'second' AND state = 'RUNNING'"),
            60, "the script's second stage to start")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    run_id = query(state, "SELECT run_id FROM runs WHERE pipeline = 'pyslow'")[0][0]
    daemon = Daemon(write_config(tmp_path), state, once=True)
    assert daemon.wait(timeout=120) == 0, daemon.output()
    with EventLog.open(state) as log:
        run = log.run(run_id)
    assert run.state == "FAILED", run.state
    assert "the daemon, whose configuration has no pipeline 'pyslow'" in run.error
    assert f"pipeline.retry({run_id!r}) resumes it" in run.error
    closed = [r for r in daemon.records() if r.get("event") == "interrupted_run_closed"]
    assert [(r["run_id"], r["level"]) for r in closed] == [(run_id, "warning")]
    # a daemon asked to retry it refuses: made PENDING, it would wait for ever
    serving = Daemon(write_config(tmp_path), state).wait_ready(60)
    try:
        refused = subprocess.run([*ahgd_exe(), "retry", run_id, "--state-dir", str(state)],
                                 capture_output=True, text=True, timeout=60, env=env())
    finally:
        serving.stop()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (f"run {run_id!r} is of pipeline 'pyslow', which this daemon's configuration does "
            "not have") in refused.stderr
    assert query(state, "SELECT state FROM runs WHERE run_id = ?", (run_id,)) == [("FAILED",)]
    # the script's retry resumes it at its first unfinished stage
    again = subprocess.run([sys.executable, str(script), str(state), "quick", run_id], env=env(),
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.stdout.strip().endswith("COMPLETED"), again.stdout + again.stderr
    assert query(state, "SELECT stage, attempt, state FROM stage_runs WHERE run_id = ? "
                        "ORDER BY stage, attempt", (run_id,)) == [
        ("first", 1, "COMPLETED"), ("second", 1, "INTERRUPTED"), ("second", 2, "COMPLETED")]
