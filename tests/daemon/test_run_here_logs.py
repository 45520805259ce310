"""``ahgd run`` and ``ahgd retry`` without a daemon keep the run's log as the daemon does:
``ahgd logs RUN`` shows everything the run said (its stages' lines, what they printed,
tracebacks), from its workers too, and the terminal still shows the stages' lines."""

from __future__ import annotations

import json
import subprocess
import textwrap

from .harness import ahgd_exe, env

STAGES = textwrap.dedent("""\
    from pathlib import Path


    class Hello:
        def __init__(self, fail_first: bool = False):
            self.fail_first = fail_first

        def extract(self, context):
            context.log.info("hello from the stage", rows=3)
            context.log.warning("a warning from the stage")
            print("printed by the stage")
            marker = Path(context.state_dir) / "failed-once"
            if self.fail_first and not marker.exists():
                marker.write_text("")
                raise KeyError("sa2_code")
            return {"n": 1}
    """)


def _ahgd(tmp_path, *args, code=0):
    proc = subprocess.run([*ahgd_exe(), *args, "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=300, env=env(), cwd=tmp_path)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return proc


def _log(tmp_path, run_id):
    out = _ahgd(tmp_path, "logs", run_id, "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def test_a_run_executed_here_keeps_its_log_and_the_terminal_shows_warnings(tmp_path):
    (tmp_path / "hello_stages.py").write_text(STAGES)
    (tmp_path / "hello.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: hello}
        stages:
          - {name: extract, type: extractor, class: hello_stages.Hello,
             config: {fail_first: true}, retry_attempts: 0}
        """))
    first = _ahgd(tmp_path, "run", "hello", "--config", "hello.yaml", code=1)
    run_id = first.stdout.split()[1]
    assert first.stdout.startswith(f"running {run_id} here")
    terminal = first.stdout + first.stderr
    assert "a warning from the stage" in terminal and "printed by the stage" in terminal
    assert "hello from the stage" in terminal           # as before: the stages are shown
    assert (tmp_path / "state" / "logs" / f"{run_id}.jsonl").exists()
    lines = _log(tmp_path, run_id)
    said = [(x.get("event"), x.get("attempt")) for x in lines]
    assert ("hello from the stage", 1) in said and ("a warning from the stage", 1) in said
    info = next(x for x in lines if x.get("event") == "hello from the stage")
    assert info["rows"] == 3 and info["stage"] == "extract" and info["level"] == "info"
    printed = [x for x in lines if x.get("event") == "output"]
    assert [(x["stream"], x["line"]) for x in printed] == [("stdout", "printed by the stage")]
    assert any("KeyError: 'sa2_code'" in json.dumps(x) for x in lines)   # the traceback
    # the retry, executed here too, appends its attempt's lines to the same log
    _ahgd(tmp_path, "retry", run_id, "--config", "hello.yaml")
    said = [(x.get("event"), x.get("attempt")) for x in _log(tmp_path, run_id)]
    assert ("hello from the stage", 1) in said and ("hello from the stage", 2) in said
