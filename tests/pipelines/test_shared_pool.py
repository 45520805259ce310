"""A script's runs share one warm worker pool, which ends with the script (issue 18, item 4).

The script runs in a subprocess, as a user would run it: a pipeline class kept
in a module (so workers are fresh interpreters that import it), run several
times with the default ``executor="process"``.  Each stage returns its
worker's pid and the module's version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import REPO

MODULE = '''\
import os
from pipelines import BasePipeline

VERSION = {version}


class WarmPipeline(BasePipeline):
    def define_stages(self):
        return ["first", "second"]

    def execute_stage(self, stage_name, context):
        return {{"pid": os.getpid(), "version": VERSION}}
'''

SCRIPT = '''\
import importlib, json, os, pathlib, signal, sys, time
sys.path.insert(0, sys.argv[1])
import warm_module

here = pathlib.Path(sys.argv[1])
seen = []

def run(label):
    pipeline = warm_module.WarmPipeline("warm", state_dir=here / "state", max_retries=0)
    ctx = pipeline.run()
    pipeline.close()
    assert ctx.state == "COMPLETED", (label, ctx.error)
    seen.append({"label": label, "first": ctx.get_output("first"),
                 "second": ctx.get_output("second")})

run("one")
run("two")                       # the same workers, already warm
def dead(pid):                   # a zombie (not reaped yet) or gone
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

killed = seen[-1]["second"]["pid"]
os.kill(killed, signal.SIGKILL)  # a worker dies between runs
deadline = time.monotonic() + 10
while not dead(killed):          # the kill has taken effect before the next run (a loaded host)
    assert time.monotonic() < deadline, f"worker {killed} still alive 10 s after SIGKILL"
    time.sleep(0.01)
run("after a worker died")       # a new worker takes over; the run does not fail
(here / "warm_module.py").write_text(sys.argv[2])
importlib.reload(warm_module)    # new code: no attempt may run the old one
run("reloaded")
print(json.dumps(seen))
'''


def test_runs_of_a_script_share_warm_workers_that_end_with_it(tmp_path: Path) -> None:
    (tmp_path / "warm_module.py").write_text(MODULE.format(version=1))
    (tmp_path / "script.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("AHGD_STATE_DIR", None)
    proc = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(tmp_path),
                           MODULE.format(version=2)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    one, two, after_death, reloaded = json.loads(proc.stdout.strip().splitlines()[-1])

    pid = one["first"]["pid"]
    assert pid != os.getpid() and one["second"]["pid"] == pid       # a worker process
    assert two["first"]["pid"] == two["second"]["pid"] == pid, (
        "the second run did not reuse the first run's worker")
    assert after_death["first"]["pid"] != pid                       # the dead one was replaced
    assert after_death["first"]["version"] == 1
    assert reloaded["first"]["version"] == reloaded["second"]["version"] == 2, (
        "a run after importlib.reload ran the old code")

    # the pool ended with the script: none of its workers is left
    pids = {r[s]["pid"] for r in (one, two, after_death, reloaded) for s in ("first", "second")}
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        time.sleep(0.05)
    assert not alive, f"worker processes {sorted(alive)} outlived the script"
