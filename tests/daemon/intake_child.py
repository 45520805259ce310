"""A child process for the intake tests: the real intake, claimer, event log and monitor, on
a machine that runs out of file descriptors (``emfile``) or of disk space (``enospc``, run in
a mount namespace with the state directory on a small tmpfs).

    python -m tests.daemon.intake_child MODE STATE_DIR INBOX

It drops one file, lets the intake fail to take it, gives the room back, and prints one
JSON line: whether the file was taken, the intake's log lines and the alerts recorded.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import structlog

from tests.tinyfs import fill


class _Lines:
    """A structlog logger factory that keeps every line (the test reads them back)."""

    def __init__(self) -> None:
        self.lines: list[dict] = []

    def __call__(self, *args: object) -> "_Lines":
        return self

    def msg(self, message: str) -> None:
        self.lines.append(json.loads(message))

    log = debug = info = warning = error = critical = msg


def main(mode: str, state: Path, inbox: Path) -> None:
    lines = _Lines()
    structlog.configure(processors=[structlog.processors.add_log_level,
                                    structlog.processors.JSONRenderer()],
                        logger_factory=lines, cache_logger_on_first_use=False)
    from ahgd_daemon.alerts import MonitorLink
    from ahgd_daemon.dropfolder import Claimer, Folder
    from ahgd_daemon.intake import FileIntake
    from ahgd_daemon import watch  # noqa: F401 - imported before the descriptors run out
    from pipelines.monitoring import PipelineMonitor
    from state import EventLog

    log = EventLog.open(state)
    monitor = PipelineMonitor(state / "metrics", enable_system_monitoring=False, event_log=log,
                              logger=structlog.get_logger("monitor"))
    alerts = MonitorLink(monitor, structlog.get_logger("daemon"))
    claimer = Claimer(log, state)
    folder = Folder("p", inbox, "*.csv", stable_for=0.0)
    intake = FileIntake(time.monotonic, lambda: None)

    class Watchers:
        @staticmethod
        def polling(folder: Folder) -> bool:
            return True

    (inbox / "x.csv").write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(20000)))
    give_back = _run_out(mode, state)
    intake.complete(folder, inbox / "x.csv")
    failed_at = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        intake.take(claimer, Watchers, alerts, stopping=lambda: False)
        time.sleep(0.05)
        if failed_at is None and any(line.get("alert_state") == "firing" for line in lines.lines):
            failed_at = time.monotonic()
            give_back()  # the room comes back: the file must be taken without a new event
        if not (inbox / "x.csv").exists() and any(
                line.get("alert_state") == "resolved" for line in lines.lines):
            break
    rows = log.query("SELECT type, payload FROM events WHERE type LIKE 'alert.%' ORDER BY seq")
    print(json.dumps({
        "failed": failed_at is not None,
        "taken": [json.loads(r[0])["name"] for r in log.query(
            "SELECT payload FROM events WHERE type = 'file.arrived'")],
        "left_in_inbox": sorted(os.listdir(inbox)),
        "lines": lines.lines,
        "alerts": [(r[0], json.loads(r[1])) for r in rows],
    }))
    intake.stop()


def _run_out(mode: str, state: Path):
    """Use up what ``mode`` names; return a function that gives it back."""
    if mode == "emfile":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass

        def give_back() -> None:
            for fd in held:
                os.close(fd)
        return give_back
    filler = fill(state / "filler")
    return lambda: filler.unlink()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
