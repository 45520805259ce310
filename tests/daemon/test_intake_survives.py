"""The drop folders' intake thread outlives an unexpected error: before, an exception while
it reported a batch's outcomes (logging, an alert) ended the thread, and every later file
waited in its folder for good, with no alert.  Now the error is logged, the files still in
their folder are tried again as after a failed claim, and the thread goes on.

A real FileIntake, a real Claimer on a real event log, real files."""

from __future__ import annotations

import time
from pathlib import Path

from ahgd_daemon.dropfolder import Claimer, Folder
from ahgd_daemon.intake import FileIntake
from state import EventLog


class _Alerts:
    def __init__(self) -> None:
        self.raised: list[tuple] = []

    def alert(self, severity, alert_id, message, **kw) -> None:
        self.raised.append((severity, alert_id, message))

    def resolve(self, alert_id, message) -> None:
        pass


class _Logger:
    def __init__(self) -> None:
        self.lines: list[tuple] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))


class _Watchers:
    @staticmethod
    def polling(folder: Folder) -> bool:
        return True


class _Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def _arrived(log: EventLog) -> list[str]:
    return [r[0] for r in log.query("SELECT json_extract(payload, '$.name') FROM events "
                                    "WHERE type = 'file.arrived' ORDER BY seq")]


def _until(what, predicate, intake, claimer, alerts, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        intake.take(claimer, _Watchers, alerts, stopping=lambda: False)
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_intake_thread_outlives_an_error_and_tries_the_files_again(tmp_path: Path,
                                                                       monkeypatch) -> None:
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    folder = Folder("p", inbox, "*.csv", stable_for=0.0)
    clock, alerts, logger = _Clock(), _Alerts(), _Logger()
    intake = FileIntake(clock, lambda: None, logger=logger)
    broken = {"claim": 1, "report": 1}
    claim, claimed = FileIntake._claim, FileIntake._claimed

    def failing_claim(self, *args):  # fails before anything is taken
        if broken["claim"]:
            broken["claim"] -= 1
            raise RuntimeError("a bug before the claim")
        return claim(self, *args)

    def failing_report(self, *args):  # fails after the file was taken
        if broken["report"]:
            broken["report"] -= 1
            raise RuntimeError("a bug while reporting")
        return claimed(self, *args)

    monkeypatch.setattr(FileIntake, "_claim", failing_claim)
    monkeypatch.setattr(FileIntake, "_claimed", failing_report)
    with EventLog.open(state) as log:
        claimer = Claimer(log, state)
        try:
            (inbox / "a.csv").write_text("x,y\n1,2\n")
            intake.complete(folder, inbox / "a.csv")
            _until("a.csv to wait for another try", lambda: intake.left_behind(),
                   intake, claimer, alerts)
            assert intake._thread.is_alive()
            assert [e for lvl, e, _ in logger.lines if lvl == "error"] == ["intake_error"]
            assert "a fault of ahgd, not of the file" in alerts.raised[0][2]
            assert (inbox / "a.csv").exists() and _arrived(log) == []
            clock.now += 120  # its retry is due: taken now (its report fails, once)
            _until("a.csv to be taken", lambda: _arrived(log) == ["a.csv"],
                   intake, claimer, alerts)
            (inbox / "b.csv").write_text("x,y\n3,4\n")
            intake.complete(folder, inbox / "b.csv")
            _until("b.csv to be taken", lambda: _arrived(log) == ["a.csv", "b.csv"],
                   intake, claimer, alerts)
            assert intake._thread.is_alive() and broken == {"claim": 0, "report": 0}
            clock.now += 120  # a.csv's old retry, were it kept, would be due now
            intake.take(claimer, _Watchers, alerts, stopping=lambda: False)
            _until("nothing left", lambda: not intake.waiting(), intake, claimer, alerts)
            assert intake.left_behind() == []
            assert not (inbox / "a.csv").exists() and not (inbox / "b.csv").exists()
            assert [e for lvl, e, _ in logger.lines if lvl == "error"] == ["intake_error"] * 2
        finally:
            intake.stop()
