"""Folders named ``state`` or ``pipelines`` in the working directory never take the place of
ahgd's packages (issue 13, item 1).

Every process here runs the way a user runs it: from a fresh directory that is not the
repository, without ``PYTHONPATH`` pointing at the clone (this environment's editable install
finds ahgd through an import hook *after* ``sys.path``, so any folder named ``state`` in the
working directory would win), and with the default state directory.  Stage modules live in
the working directory (or beside the script), and every stage runs in a worker process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from state import EventLog

from .harness import ahgd_exe

STAGES = '''\
import os


class Extract:
    def extract(self, context):
        return {"n": 41, "pid": os.getpid()}


class Transform:
    def transform(self, context):
        return {"n": context.get_output("extract")["n"] + 1, "pid": os.getpid()}


def check(path):
    return None if open(path).read().startswith("a,b") else "no header a,b"
'''

PIPELINE_FILE = '''\
pipeline: {name: mine}
triggers:
  - {type: drop_folder, path: "${state_dir}/inbox/mine", pattern: "*.csv", stable_for: PT0.1S,
     input_check: {callable: mystages.check}}
stages:
  - {name: extract, type: extractor, class: mystages.Extract, retry_attempts: 0}
  - {name: transform, type: transformer, class: mystages.Transform, retry_attempts: 0}
'''


def user_env() -> dict[str, str]:
    """The environment of a user of the installed ahgd: no AHGD_STATE_DIR, no PYTHONPATH."""
    return {k: v for k, v in os.environ.items()
            if k not in ("AHGD_STATE_DIR", "PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                         "WATCHDOG_PID")}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A user's folder: a ``state`` folder of their own, YAML in ``pipelines/``, stage code."""
    work = tmp_path / "work"
    (work / "state").mkdir(parents=True)
    (work / "state" / "notes.txt").write_text("the user's own folder\n")
    (work / "pipelines").mkdir()
    (work / "pipelines" / "mine.yaml").write_text(PIPELINE_FILE)
    (work / "pipelines" / "master.yaml").write_text(
        "pipelines:\n  - {name: mine, config_file: mine.yaml}\n")
    (work / "mystages.py").write_text(STAGES)
    return work


class Ran:
    """A finished command: its pid, exit code and output."""

    def __init__(self, cmd: list[str], cwd: Path, timeout: float = 120):
        proc = subprocess.Popen(cmd, cwd=cwd, env=user_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.pid = proc.pid
        try:
            self.stdout, self.stderr = proc.communicate(timeout=timeout)
        finally:
            proc.kill()
            proc.wait()
        self.returncode = proc.returncode
        self.output = self.stdout[-3000:] + self.stderr[-3000:]


def outputs(state_dir: Path) -> list[dict]:
    """The value each completed stage returned (it carries the pid of the process that ran
    it), in the order the stages started."""
    with EventLog.open(state_dir) as log:
        runs = log.runs()
    return [{"stage": stage, **att.output["value"]}
            for run in runs for stage, att in sorted(run.attempts.items(),
                                                     key=lambda kv: kv[1].started_at or "")
            if att.output and att.output.get("format") == "inline"]


def test_ahgd_run_with_state_and_pipelines_folders_in_the_working_directory(workdir):
    proc = Ran([*ahgd_exe(), "run", "mine", "--config", "pipelines/mine.yaml"], workdir)
    assert proc.returncode == 0, proc.output
    assert "COMPLETED" in proc.stdout
    state_dir = workdir / "ahgd-state"  # the default; the user's ./state is left alone
    assert sorted(p.name for p in (workdir / "state").iterdir()) == ["notes.txt"]
    done = outputs(state_dir)
    assert [(o["stage"], o["n"]) for o in done] == [("extract", 41), ("transform", 42)]
    assert all(o["pid"] != proc.pid for o in done)  # in worker processes, not in `ahgd run`


def test_a_state_directory_of_an_earlier_version_at_dot_state_is_still_found(workdir):
    (workdir / "state" / "notes.txt").unlink()
    EventLog.open(workdir / "state").close()  # ./state/history.db: the old default's history
    proc = Ran([*ahgd_exe(), "run", "mine", "--config", "pipelines/mine.yaml"], workdir)
    assert proc.returncode == 0, proc.output
    assert f"note: using {workdir / 'state'}, the state directory found there" in proc.stderr
    assert "mv state ahgd-state" in proc.stderr
    assert not (workdir / "ahgd-state").exists()
    assert [o["n"] for o in outputs(workdir / "state")] == [41, 42]
    # python -m ahgd_daemon, started in that folder, reads the same history
    proc = Ran([sys.executable, "-m", "ahgd_daemon", "history"], workdir)
    assert proc.returncode == 0, proc.output
    assert "mine" in proc.stdout and "COMPLETED" in proc.stdout


def test_the_daemon_checks_inputs_and_runs_stages_from_that_working_directory(workdir):
    inbox = workdir / "ahgd-state" / "inbox" / "mine"
    inbox.mkdir(parents=True)
    (inbox / "good.csv").write_text("a,b\n1,2\n")
    (inbox / "bad.csv").write_text("x,y\n1,2\n")
    proc = Ran([*ahgd_exe(), "daemon", "--config", "pipelines/master.yaml", "--once",
                "--json-logs"], workdir)
    assert proc.returncode == 0, proc.output
    # the input check ran (in its own child) and judged each file by its content
    reasons = list((workdir / "ahgd-state" / "quarantine" / "mine").glob("*.reason.json"))
    assert [json.loads(r.read_text())["reason"] for r in reasons] == ["no header a,b"]
    assert [(o["stage"], o["n"]) for o in outputs(workdir / "ahgd-state")] == [
        ("extract", 41), ("transform", 42)]


def test_scripts_run_orchestrated_and_repeated_pipelines_in_workers(workdir, tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "counting.py").write_text(STAGES + textwrap.dedent('''\

        from pipelines import BasePipeline


        class CountPipeline(BasePipeline):
            def define_stages(self):
                return ["count"]

            def execute_stage(self, stage_name, context):
                return {"n": 7, "pid": os.getpid()}
        '''))
    (workdir / "pipelines" / "counted.yaml").write_text(
        PIPELINE_FILE.replace("name: mine", "name: counted").replace("mystages.", "counting."))
    (workdir / "pipelines" / "nightly.yaml").write_text(
        "pipelines:\n  - {name: counted, config_file: counted.yaml}\n")
    (scripts / "nightly.py").write_text(textwrap.dedent('''\
        import json, os
        from pipelines import PipelineOrchestrator
        from counting import CountPipeline

        orch = PipelineOrchestrator("nightly")
        orch.register_from_config("pipelines/nightly.yaml")
        result = orch.run()
        runs = [CountPipeline("count").run() for _ in range(2)]   # a script's second run()
        print(json.dumps({"orchestrated": result.state, "errors": result.errors,
                          "runs": [[c.state, c.error, c.state == "COMPLETED" and c.get_output("count")]
                                   for c in runs],
                          "me": os.getpid()}))
        '''))
    # the script lives in its own folder and runs in the user's folder, as a cron job would
    proc = Ran([sys.executable, str(scripts / "nightly.py")], workdir)
    assert proc.returncode == 0, proc.output
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["orchestrated"] == "COMPLETED", report["errors"]
    for state, error, output in report["runs"]:
        assert state == "COMPLETED", error
        assert output["n"] == 7
    done = outputs(workdir / "ahgd-state")
    assert [(o["stage"], o["n"]) for o in done] == [
        ("extract", 41), ("transform", 42), ("count", 7), ("count", 7)]
    assert all(o["pid"] != proc.pid for o in done)  # each in a worker process
