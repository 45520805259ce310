"""A script killed in the middle of a run, with no daemon anywhere (issue 13, item 6).

The run stays RUNNING in the log; ``ahgd history``, ``ahgd status`` and ``ahgd state
check`` say its owner is gone; ``ahgd retry`` resumes it at the stage that was cut
short; and the next ``run()`` of the pipeline from a script closes such a run as
FAILED (``pipeline.retry(run_id)`` resumes that one) and runs anew.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .harness import REPO, env, query, wait_until

STAGES = '''\
import json
import os
import time
from pathlib import Path


def trace(context, stage):
    with open(Path(context.state_dir) / "trace.jsonl", "a") as f:
        f.write(json.dumps({"run_id": context.run_id, "stage": stage,
                            "attempt": context.attempt}) + "\\n")


class Extract:
    def extract(self, context):
        trace(context, "extract")
        return {"numbers": [1, 2, 3]}


class Transform:
    """While the file ``hold`` exists, waits (at most 120 s): the test kills the script then."""

    def __init__(self, hold):
        self.hold = hold

    def transform(self, context):
        trace(context, "transform")
        if os.path.exists(self.hold):
            open(self.hold + ".started", "w").close()
            deadline = time.monotonic() + 120
            while os.path.exists(self.hold) and time.monotonic() < deadline:
                time.sleep(0.05)
        return {"doubled": [2 * n for n in context.get_output("extract")["numbers"]]}


class Load:
    def load(self, context):
        trace(context, "load")
        return {"total": sum(context.get_output("transform")["doubled"])}
'''

SCRIPT = '''\
import json, sys
from pipelines.config.configured import load_pipeline

pipeline = load_pipeline(sys.argv[1], state_dir=sys.argv[2])
context = pipeline.retry(sys.argv[3]) if len(sys.argv) > 3 else pipeline.run()
print(json.dumps({"run_id": context.run_id, "state": context.state, "error": context.error,
                  "load": context.get_output("load") if context.state == "COMPLETED" else None}))
'''


@pytest.fixture
def setup(tmp_path: Path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "crashy_stages.py").write_text(STAGES)
    (code / "nightly.py").write_text(SCRIPT)
    hold = tmp_path / "hold"
    (tmp_path / "sums.yaml").write_text(textwrap.dedent(f"""\
        pipeline: {{name: sums}}
        stages:
          - {{name: extract, type: extractor, class: crashy_stages.Extract}}
          - {{name: transform, type: transformer, class: crashy_stages.Transform,
             config: {{hold: "{hold}"}}}}
          - {{name: load, type: loader, class: crashy_stages.Load}}
        """))
    extra = {"PYTHONPATH": os.pathsep.join([str(REPO), str(code)])}
    return tmp_path, tmp_path / "state-dir", hold, env(extra)


def cli(environ: dict, *args: str) -> subprocess.CompletedProcess:
    from .harness import ahgd_exe

    return subprocess.run([*ahgd_exe(), *args], capture_output=True, text=True, env=environ,
                          timeout=120)


def script(tmp: Path, state: Path, environ: dict, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(tmp / "code" / "nightly.py"), str(tmp / "sums.yaml"),
                          str(state), *args], capture_output=True, text=True, env=environ,
                         cwd=tmp, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def killed_mid_stage(tmp: Path, state: Path, hold: Path, environ: dict) -> tuple[str, int]:
    """A script run whose transform stage is cut short by SIGKILL: (run id, the script's pid)."""
    hold.touch()
    Path(f"{hold}.started").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(tmp / "code" / "nightly.py"),
                             str(tmp / "sums.yaml"), str(state)], env=environ, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: Path(f"{hold}.started").exists(), 60, "the transform stage to start")
        proc.send_signal(signal.SIGKILL)  # its worker dies with it (PR_SET_PDEATHSIG)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        hold.unlink()
    (run_id,), = query(state, "SELECT run_id FROM runs WHERE state = 'RUNNING'")
    return run_id, proc.pid


def executions(state: Path, run_id: str) -> list[tuple[str, int]]:
    lines = (state / "trace.jsonl").read_text().splitlines()
    return [(t["stage"], t["attempt"]) for t in map(json.loads, lines) if t["run_id"] == run_id]


def test_a_killed_script_run_is_shown_owner_gone_and_resumed_by_ahgd_retry(setup):
    tmp, state, hold, environ = setup
    run_id, pid = killed_mid_stage(tmp, state, hold, environ)
    gone = f"owner gone: pid {pid} on host {socket.gethostname()}"

    shown = cli(environ, "history", "--state-dir", str(state))
    assert shown.returncode == 0, shown.stderr
    assert f"RUNNING (owner gone: pid {pid} on host" in shown.stdout
    assert "`ahgd retry RUN_ID` resumes one" in shown.stdout
    (record,) = json.loads(cli(environ, "history", "--json", "--state-dir", str(state)).stdout)
    assert record["state"] == "RUNNING" and record["owner_gone"]["text"] == gone
    status = cli(environ, "status", "--state-dir", str(state))
    assert status.returncode == 0, status.stderr
    assert f"{run_id}: {gone}" in " ".join(status.stdout.split())
    doc = json.loads(cli(environ, "status", "--json", "--state-dir", str(state)).stdout)
    assert [r["owner_gone"]["pid"] for r in doc["active_runs"]] == [pid]
    check = cli(environ, "state", "check", "--state-dir", str(state))
    assert check.returncode == 0, check.stderr  # the log itself is sound
    assert f"{run_id} (sums): {gone}" in check.stderr and "ahgd retry RUN_ID" in check.stderr

    retried = cli(environ, "retry", run_id, "--config", str(tmp / "sums.yaml"),
                  "--state-dir", str(state))
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"(it was RUNNING, {gone})" in retried.stdout
    assert query(state, "SELECT state, json_extract(output, '$.value.total') FROM stage_runs "
                        "WHERE run_id = ? AND stage = 'load'", (run_id,)) == [("COMPLETED", 12)]
    # resumed at the stage that was cut short: extract is not run again
    assert executions(state, run_id) == [("extract", 1), ("transform", 1), ("transform", 2),
                                         ("load", 1)]
    assert [t for (t,) in query(state, "SELECT type FROM events WHERE run_id = ? AND type IN "
                                       "('stage.interrupted', 'run.recovered') ORDER BY seq",
                                (run_id,))] == ["stage.interrupted", "run.recovered"]
    assert "owner gone" not in cli(environ, "history", "--state-dir", str(state)).stdout


def test_the_next_script_run_closes_the_killed_run_which_retry_resumes(setup):
    tmp, state, hold, environ = setup
    run_id, pid = killed_mid_stage(tmp, state, hold, environ)

    fresh = script(tmp, state, environ)  # another script's run() of the same pipeline
    assert fresh["state"] == "COMPLETED" and fresh["run_id"] != run_id, fresh
    assert fresh["load"] == {"total": 12}
    ((closed_state, error, stage),) = query(
        state, "SELECT state, error, failed_stage FROM runs WHERE run_id = ?", (run_id,))
    assert (closed_state, stage) == ("FAILED", "transform")
    assert f"interrupted: the process running it stopped (owner gone: pid {pid}" in error
    assert f"`ahgd retry {run_id}` resumes it" in error
    assert executions(state, fresh["run_id"]) == [("extract", 1), ("transform", 1), ("load", 1)]

    again = script(tmp, state, environ, run_id)  # pipeline.retry(run_id), from Python
    assert again == {"run_id": run_id, "state": "COMPLETED", "error": None,
                     "load": {"total": 12}}
    assert executions(state, run_id) == [("extract", 1), ("transform", 1), ("transform", 2),
                                         ("load", 1)]
