"""SIGHUP makes new attempts run the stage code on disk (issue 13, item 5).

The stage module lives outside the repository, in a folder on the daemon's
``PYTHONPATH`` (as a systemd drop-in would put it).  It is rewritten while a run
is in the middle of a stage: that attempt finishes on the code it started with;
after the reload, new attempts run the new code, and a class added to the
already-imported module is found.  A stage with ``executor: inprocess`` runs in
the daemon's own process, and gets the new code too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

from .harness import REPO, Daemon, ahgd_exe, env, query, wait_until

MODULE = "deployed_stages"

VERSION_1 = '''\
import os
import time


class Compute:
    """Version 1; while the file ``hold`` exists it waits (at most 60 s) before answering."""

    def __init__(self, hold):
        self.hold = hold

    def transform(self, context):
        if os.path.exists(self.hold):
            open(self.hold + ".started", "w").close()
            deadline = time.monotonic() + 60
            while os.path.exists(self.hold) and time.monotonic() < deadline:
                time.sleep(0.05)
        return {"version": 1, "pid": os.getpid()}


class Describe:
    def transform(self, context):
        return {"class": "Describe", "version": 1, "pid": os.getpid()}


class Note:
    def transform(self, context):
        return {"version": 1, "pid": os.getpid()}
'''

VERSION_2 = '''\
import os


class Compute:
    """Version 2: answers at once."""

    def __init__(self, hold):
        self.hold = hold

    def transform(self, context):
        return {"version": 2, "pid": os.getpid()}


class Describe:
    def transform(self, context):
        return {"class": "Describe", "version": 2, "pid": os.getpid()}


class DescribeV2:
    """Added to a module the daemon's workers have already imported."""

    def transform(self, context):
        return {"class": "DescribeV2", "version": 2, "pid": os.getpid()}


class Note:
    def transform(self, context):
        return {"version": 2, "pid": os.getpid()}
'''


def pipeline_file(hold: Path, describe: str) -> str:
    return textwrap.dedent(f"""\
        pipeline: {{name: deployed}}
        stages:
          - {{name: compute, type: transformer, class: {MODULE}.Compute,
             config: {{hold: "{hold}"}}, retry_attempts: 0}}
          - {{name: describe, type: transformer, class: {MODULE}.{describe}, retry_attempts: 0}}
          - {{name: note, type: transformer, class: {MODULE}.Note, executor: inprocess,
             retry_attempts: 0}}
        """)


def request_run(state_dir: Path, extra_env: dict[str, str]) -> str:
    out = subprocess.run([*ahgd_exe(), "run", "deployed", "--state-dir", str(state_dir),
                          "--no-wait"], capture_output=True, text=True, env=env(extra_env),
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split("requested run ")[1].split()[0]


def outputs(state_dir: Path, run_id: str) -> dict[str, dict]:
    return {stage: json.loads(output)["value"] for stage, output in query(
        state_dir, "SELECT stage, output FROM stage_runs WHERE run_id = ? AND state = "
                   "'COMPLETED'", (run_id,))}


def ended(state_dir: Path, run_id: str) -> str | None:
    rows = query(state_dir, "SELECT state FROM runs WHERE run_id = ? AND state IN "
                            "('COMPLETED', 'FAILED', 'CANCELLED')", (run_id,))
    return rows[0][0] if rows else None


def test_sighup_makes_new_attempts_run_the_code_on_disk(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(VERSION_1)
    hold = tmp_path / "hold"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "deployed.yaml").write_text(pipeline_file(hold, "Describe"))
    (conf / "master.yaml").write_text(
        "pipelines:\n  - {name: deployed, config_file: deployed.yaml}\n"
        "daemon: {max_workers: 1, shutdown_grace: PT5S}\n")  # one worker: no luck involved
    state = tmp_path / "state-dir"
    extra = {"PYTHONPATH": os.pathsep.join([str(REPO), str(code)])}
    d = Daemon(conf / "master.yaml", state, extra_env=extra).wait_ready()
    try:
        warm = request_run(state, extra)  # the worker imports version 1
        wait_until(lambda: ended(state, warm), 60, "the first run")
        first = outputs(state, warm)
        assert first["compute"]["version"] == 1 and first["describe"]["class"] == "Describe"
        assert first["note"] == {"version": 1, "pid": d.proc.pid}  # in the daemon itself
        old_worker = first["compute"]["pid"]

        hold.touch()
        held = request_run(state, extra)  # its compute waits, on version 1, in that worker
        wait_until(lambda: Path(f"{hold}.started").exists(), 60, "the held attempt to start")

        (code / f"{MODULE}.py").write_text(VERSION_2)
        (conf / "deployed.yaml").write_text(pipeline_file(hold, "DescribeV2"))
        d.signal(signal.SIGHUP)
        wait_until(lambda: any(r.get("event") in ("config_reloaded", "daemon.config_reload_failed")
                               for r in d.records()), 60, "the reload")
        failed = [r for r in d.records() if r.get("event") == "daemon.config_reload_failed"]
        assert not failed, failed[0]["error"]

        after = request_run(state, extra)
        hold.unlink()  # the held attempt finishes now
        wait_until(lambda: ended(state, held) and ended(state, after), 60, "both runs")
        assert ended(state, held) == "COMPLETED" and ended(state, after) == "COMPLETED", \
            query(state, "SELECT run_id, error FROM runs")
        held_out, new_out = outputs(state, held), outputs(state, after)
        # the attempt running during the reload finished on the code it started with
        assert held_out["compute"] == {"version": 1, "pid": old_worker}
        # new attempts: the new code, in a worker that imported it afresh
        assert new_out["compute"]["version"] == 2 and new_out["compute"]["pid"] != old_worker
        assert new_out["describe"]["class"] == "DescribeV2"
        # a stage run in the daemon's own process (executor: inprocess) imports afresh too
        assert new_out["note"] == {"version": 2, "pid": d.proc.pid}
    finally:
        assert d.stop() == 0
