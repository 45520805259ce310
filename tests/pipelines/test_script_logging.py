"""A script sees its runs in the standard logging hierarchy (issue 13, item 12): stage
starts, failures and retries at INFO without configuring anything, every detail with
``logging.getLogger("pipelines").setLevel(logging.DEBUG)``, and nothing it did not ask for
once it configures logging itself; processes ahgd configures keep their JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """\
import logging, sys
from pipelines import BasePipeline

{setup}

class Flaky(BasePipeline):
    def define_stages(self):
        return ["extract", "load"]

    def execute_stage(self, stage_name, context):
        context.log.info("stage_says_hello", stage_name=stage_name)
        if stage_name == "load" and context.attempt == 1:
            raise OSError("the share is not mounted yet")
        return [{{"n": 1}}]

ctx = Flaky("flaky", state_dir="state", retry_delay=0.01, executor="{executor}").run()
print("RESULT", ctx.state)
"""


def _run(tmp_path: Path, setup: str = "", executor: str = "process") -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(setup=setup, executor=executor))
    env = {k: v for k, v in os.environ.items() if k not in ("AHGD_STATE_DIR", "AHGD_LOG_FORMAT")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT COMPLETED" in proc.stdout, proc.stdout + proc.stderr
    return proc


def _lines(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(w in line for w in words)]


@pytest.mark.parametrize("executor", ["process", "inprocess"])
def test_a_script_sees_stage_starts_failures_and_retries_at_info(tmp_path, executor):
    err = _run(tmp_path, executor=executor).stderr
    assert len(_lines(err, "INFO pipelines.run: stage.started pipeline=flaky", "stage=extract",
                      "attempt=1")) == 1
    assert _lines(err, "WARNING pipelines.run: stage.failed pipeline=flaky", "stage=load",
                  "attempt=1", "error='OSError: the share is not mounted yet'")
    assert _lines(err, "WARNING pipelines.run: stage.retrying pipeline=flaky", "stage=load",
                  "attempt=2", "delay_s=")
    assert _lines(err, "INFO pipelines.run: stage.completed", "stage=load", "attempt=2")
    assert _lines(err, "INFO pipelines.run: run.completed pipeline=flaky")
    assert len(_lines(err, "INFO pipelines.stage: stage_says_hello")) == 3   # in the workers too
    assert " DEBUG " not in err


def test_setting_the_pipelines_logger_to_debug_shows_debug_lines(tmp_path):
    err = _run(tmp_path, 'logging.getLogger("pipelines").setLevel(logging.DEBUG)').stderr
    assert _lines(err, "DEBUG pipelines.run: run.requested pipeline=flaky")
    assert _lines(err, "DEBUG pipelines.run: stage.completed.detail", "stage=extract",
                  "output={'path': 'data/")
    assert _lines(err, "DEBUG pipelines.run: stage.failed.detail", "stage=load")
    assert 'raise OSError("the share is not mounted yet")' in err
    assert _lines(err, "INFO pipelines.run: stage.started")


def test_a_script_that_configures_logging_decides(tmp_path):
    proc = _run(tmp_path, 'logging.basicConfig(level=logging.WARNING, stream=sys.stdout, '
                          'format="MINE %(levelname)s %(name)s %(message)s")')
    assert proc.stderr == ""
    assert _lines(proc.stdout, "MINE WARNING pipelines.run stage.failed pipeline=flaky")
    assert not _lines(proc.stdout, "stage.started")
    quiet = _run(tmp_path, 'logging.getLogger("pipelines").setLevel(logging.ERROR)')
    assert "stage.started" not in quiet.stderr and "stage.failed" not in quiet.stderr


def test_processes_ahgd_configures_keep_their_json_lines(tmp_path):
    proc = _run(tmp_path, "from pipelines.execution.logsetup import configure_logging\n"
                          "configure_logging(json_lines=True)", executor="inprocess")
    said = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    hello = [d for d in said if d["event"] == "stage_says_hello"]
    assert len(hello) == 3
    assert set(hello[0]) >= {"timestamp", "level", "event", "pipeline", "run_id", "stage",
                             "attempt"}
    assert "pipelines.run" not in proc.stderr + proc.stdout   # the daemon logs events itself
