"""The daemon's JSON log lines are rendered once (issue 18 item 2): the same bytes on
stdout and in a run's own log as the processor chain that rendered them twice, and a
run's log is kept open between lines instead of opened for each."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import structlog

from ahgd_daemon.logs import EventLogger
from pipelines.execution import logsetup
from state import new_event, runlogs


class _NoLog:
    def run(self, run_id):
        return None


def _events():
    yield new_event("run.requested", "r-1", pipeline="thr", trigger="drop_folder",
                    params={"x": 1})._replace(seq=1)
    yield new_event("stage.started", "r-1", stage="extract", attempt=1)._replace(seq=2)
    yield new_event("stage.completed", "r-1", stage="extract", attempt=1, rows=3, wall_s=0.25,
                    output={"path": "p"}, note=None)._replace(seq=3)
    yield new_event("stage.failed", "r-1", stage="load", attempt=2, error="Zürich \u2013 bad",
                    traceback="Traceback (most recent call last):\n  boom")._replace(seq=4)
    yield new_event("stage.retrying", "r-1", stage="load", attempt=3, delay_s=1.5,
                    reason=Path("/tmp/x"), ctrl="a\x01b", slash="a\\u0041")._replace(seq=5)
    yield new_event("file.arrived", None, pipeline="thr", name="a.csv")._replace(seq=6)
    yield new_event("run.completed", "r-1", wall_s=1.0)._replace(seq=7)


def _lines(tmp: Path, processors) -> tuple[list[str], list[str]]:
    out = io.StringIO()
    logsetup.configure_logging(json_lines=True, stream=out)
    if processors is not None:  # the chain as it was: tee, drop None, order, JSONRenderer
        structlog.configure(processors=processors)
    logsetup.keep_run_logs(tmp)
    try:
        logger = EventLogger(_NoLog())
        for event in _events():
            logger(event)
    finally:
        logsetup.keep_run_logs(None)
        runlogs.close_all()
    stamp = re.compile(r'"timestamp": "[^"]*"')
    run_log = (tmp / "logs" / "r-1.jsonl").read_text(encoding="utf-8").splitlines()
    return ([stamp.sub('"timestamp": "T"', line) for line in out.getvalue().splitlines()],
            [stamp.sub('"timestamp": "T"', line) for line in run_log])


def test_lines_are_the_bytes_the_two_pass_chain_wrote(tmp_path):
    old_chain = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                 structlog.processors.TimeStamper(fmt="iso", utc=True),
                 structlog.processors.format_exc_info, logsetup._tee_to_run_log,
                 logsetup._drop_none, logsetup._order,
                 structlog.processors.JSONRenderer(sort_keys=False)]
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    try:
        old = _lines(tmp_path / "old", old_chain)
        new = _lines(tmp_path / "new", None)
    finally:
        structlog.reset_defaults()
    assert new == old
    stdout, run_log = new
    assert len(stdout) == 7 and len(run_log) == 6  # file.arrived names no run
    assert "traceback" not in stdout[3] and json.loads(run_log[3])["traceback"].endswith("boom")
    assert json.loads(run_log[4])["reason"] == "/tmp/x"            # str() in the run's log
    assert json.loads(stdout[4])["reason"] == "PosixPath('/tmp/x')"  # repr() on stdout


def test_a_runs_log_stays_open_between_lines_and_follows_a_removal(tmp_path):
    path = runlogs.run_log_path(tmp_path, "r-2")

    def open_on_it() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in os.listdir(fds) if os.path.realpath(fds / fd) == str(path))

    try:
        for i in range(3):
            assert runlogs.append_line(tmp_path, "r-2", json.dumps({"i": i}))
        assert open_on_it() == 1  # one descriptor, kept: not opened and closed per line
        path.unlink()  # retention took the run's log: the next line starts a new file
        assert runlogs.append(tmp_path, "r-2", {"i": 3})
        assert [json.loads(x) for x in path.read_text().splitlines()] == [{"i": 3}]
    finally:
        runlogs.close_all()
    assert open_on_it() == 0


def test_a_terminal_level_keeps_lines_below_it_off_the_stream_but_in_the_runs_log(tmp_path):
    """``ahgd run``'s own lines: warnings on the terminal, everything in the run's log, for
    JSON lines and for a terminal's console lines alike."""
    try:
        for json_lines in (True, False):
            out = io.StringIO()
            logsetup.configure_logging(json_lines=json_lines, level="info", stream=out,
                                       terminal_level="warning")
            logsetup.keep_run_logs(tmp_path)
            log = structlog.get_logger("t")
            log.info("quiet line", run_id=f"r-{json_lines}")
            log.warning("loud line", run_id=f"r-{json_lines}")
            log.debug("below the level", run_id=f"r-{json_lines}")
            logsetup.keep_run_logs(None)
            runlogs.close_all()
            shown = out.getvalue()
            assert "loud line" in shown and "quiet line" not in shown, shown
            kept = [json.loads(x)["event"] for x in
                    (tmp_path / "logs" / f"r-{json_lines}.jsonl").read_text().splitlines()]
            assert kept == ["quiet line", "loud line"]
    finally:
        structlog.reset_defaults()
