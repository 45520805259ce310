"""The terminal view of ``ahgd status``: hand-built dashboard documents (issue 7 spec) rendered as plain text."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
from rich.console import Console

from ahgd_daemon.statusview import BAR_WIDTH, _duration, render_status

NOW = "2026-11-26T14:10:00.000000Z"
LONG_ERROR = "ValueError: " + "x" * 488  # 500 characters on one line


def _render(dashboard: dict[str, Any], **kwargs: Any) -> str:
    out = io.StringIO()
    render_status(dashboard, console=Console(file=out, no_color=True, width=100), **kwargs)
    return out.getvalue()


def _section(text: str, title: str) -> str:
    """The lines from the heading starting with ``title`` up to the next blank line."""
    start = text.index("\n" + title) + 1
    end = text.find("\n\n", start)
    return text[start:] if end == -1 else text[start:end]


def _line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


@pytest.fixture
def busy() -> dict[str, Any]:
    """A daemon running two runs (33 % and 100 %), one open error alert, a failed and a completed last run."""
    return {
        "generated_at": NOW,
        "daemon": {"pid": 4242, "state_dir": "/var/lib/ahgd", "uptime_s": 65.0, "healthy": True,
                   "recovering": False, "workers": {"max": 2, "busy": 2}, "files_waiting": 3,
                   "pipelines": ["seifa_sa2", "census_g01"]},
        "queue": {"pending_runs": 4, "running_runs": 2, "running_stages": 2, "parked_runs": 1},
        "system": {"at": NOW, "cpu_percent": 12.5, "memory_percent": 91.0,
                   "disks": [{"path": "/var/lib/ahgd", "percent": 55.0, "free_bytes": 3 * 1024**3}],
                   "process_rss_mb": 50.2, "process_cpu_s": 1.2,
                   "workers": [{"pid": 5001, "run_id": "seifa_sa2-20261126T140800-aaaaaa",
                                "stage": "transform", "rss_mb": 90.0, "cpu_percent": 50.0}]},
        "thresholds": {"memory_percent": 85.0, "disk_percent": 90.0, "cpu_percent": None},
        "active_runs": [
            {"run_id": "seifa_sa2-20261126T140800-aaaaaa", "pipeline": "seifa_sa2", "state": "RUNNING",
             "trigger": "drop_folder", "started_at": "2026-11-26T14:08:55Z", "elapsed_s": 65.0,
             "current_stage": "transform", "stages_total": 3, "stages_done": 1, "progress_percentage": 33.3,
             "stages": [{"stage": "extract", "state": "COMPLETED", "attempt": 1},
                        {"stage": "transform", "state": "RUNNING", "attempt": 2}]},
            {"run_id": "census_g01-20261126T140900-bbbbbb", "pipeline": "census_g01", "state": "RUNNING",
             "trigger": "schedule", "started_at": "2026-11-26T14:09:56.800000Z", "elapsed_s": 3.2,
             "current_stage": "load", "stages_total": 2, "stages_done": 2, "progress_percentage": 100.0,
             "stages": []},
        ],
        "recent_runs": {
            "seifa_sa2": [
                {"run_id": "seifa_sa2-20261126T130000-cccccc", "state": "FAILED", "trigger": "manual",
                 "requested_at": "2026-11-26T13:00:00Z", "started_at": "2026-11-26T13:00:01Z",
                 "ended_at": "2026-11-26T14:05:00Z", "duration_s": 3899.0, "failed_stage": "validate",
                 "error": "ValidationFailed: 12 rows have no SA2 code\n  at row 7\n  at row 9"},
                {"run_id": "seifa_sa2-20261126T120000-dddddd", "state": "COMPLETED", "trigger": "schedule",
                 "requested_at": "2026-11-26T12:00:00Z", "started_at": "2026-11-26T12:00:01Z",
                 "ended_at": "2026-11-26T12:01:06Z", "duration_s": 65.0, "failed_stage": None, "error": None},
            ],
        },
        "alerts": {
            "open": [{"id": "run_failed:seifa_sa2", "name": "run_failed", "severity": "error",
                      "message": "seifa_sa2 failed at validate", "raised_at": "2026-11-26T14:05:00Z",
                      "fields": {"pipeline": "seifa_sa2"}}],
            "counts": {"info": 0, "warning": 0, "error": 1, "critical": 0},
            "recent": [],
        },
        "pipelines": {"seifa_sa2": {"runs": 2}},
    }


@pytest.fixture
def idle() -> dict[str, Any]:
    """No daemon: every key the spec allows to be null is null, every list is empty."""
    return {
        "generated_at": NOW,
        "daemon": None,
        "queue": {"pending_runs": 0, "running_runs": 0, "running_stages": 0, "parked_runs": 0},
        "system": None,
        "thresholds": {"memory_percent": None, "disk_percent": None, "cpu_percent": None},
        "active_runs": [],
        "recent_runs": {},
        "alerts": {"open": [], "counts": {"info": 0, "warning": 0, "error": 0, "critical": 0}, "recent": []},
        "pipelines": {},
    }


def test_header_names_the_daemon_workers_queue_and_waiting_files(busy: dict[str, Any]) -> None:
    text = _render(busy)
    header = text.splitlines()
    assert header[0] == "ahgd daemon pid 4242 on /var/lib/ahgd, up 1m 05s"
    assert header[1] == "workers 2/2 busy \u00b7 queue 4 pending, 2 running, 1 parked \u00b7 3 files waiting"


def test_active_runs_show_id_stage_progress_and_elapsed(busy: dict[str, Any]) -> None:
    active = _section(_render(busy), "Active runs (2)")
    first = _line_with(active, "seifa_sa2-20261126T140800-aaaaaa")
    assert "transform (try 2)" in first
    assert "1/3 33%" in first
    assert first.rstrip().endswith("1m 05s")
    second = _line_with(active, "census_g01-20261126T140900-bbbbbb")
    assert "2/2 100%" in second
    assert "\u2501" * BAR_WIDTH in second  # the full bar
    assert second.rstrip().endswith("3.2s")


def test_queued_runs_beyond_those_listed_are_counted(busy: dict[str, Any]) -> None:
    busy["active_runs_not_shown"] = 7
    active = _section(_render(busy), "Active runs (9)")
    assert "and 7 more queued (the oldest are shown)" in active


def test_pending_run_without_numbers_is_queued_at_zero(busy: dict[str, Any]) -> None:
    busy["active_runs"] = [{"run_id": "r-pending", "pipeline": "seifa_sa2", "state": "PENDING",
                            "started_at": None, "elapsed_s": None, "current_stage": None,
                            "stages_total": 3, "stages_done": 0, "progress_percentage": None}]
    line = _line_with(_render(busy), "r-pending")
    assert "queued" in line
    assert "0/3 0%" in line
    assert line.rstrip().endswith("\u2014")


def test_open_alert_shows_severity_name_message_and_since(busy: dict[str, Any]) -> None:
    line = _line_with(_section(_render(busy), "Open alerts (1)"), "run_failed")
    assert "ERROR" in line
    assert "seifa_sa2 failed at validate" in line
    assert line.rstrip().endswith("5m 00s ago")


def test_last_runs_show_failed_stage_and_only_the_error_first_line(busy: dict[str, Any]) -> None:
    last = _section(_render(busy), "Last runs (2)")
    assert "  seifa_sa2" in last.splitlines()
    failed = _line_with(last, "seifa_sa2-20261126T130000-cccccc")
    assert "FAILED" in failed and "5m 00s ago" in failed and "took 1h 04m" in failed
    assert "failed at stage 'validate': ValidationFailed: 12 rows have no SA2 code" in last
    assert "at row 7" not in last
    done = _line_with(last, "seifa_sa2-20261126T120000-dddddd")
    assert "COMPLETED" in done and "took 1m 05s" in done


def test_a_500_character_error_is_cut_to_one_line_with_an_ellipsis(busy: dict[str, Any]) -> None:
    busy["recent_runs"]["seifa_sa2"][0]["error"] = LONG_ERROR
    failure = _line_with(_render(busy), "failed at stage 'validate'")
    assert failure.endswith("\u2026")
    assert len(failure) <= 100
    assert "ValueError: xxxx" in failure
    assert LONG_ERROR not in _render(busy)


def test_traceback_errors_show_their_last_line(busy: dict[str, Any]) -> None:
    busy["recent_runs"]["seifa_sa2"][0]["error"] = (
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'sa2_code'\n")
    assert "failed at stage 'validate': KeyError: 'sa2_code'" in _render(busy)


def test_recent_limits_runs_per_pipeline(busy: dict[str, Any]) -> None:
    text = _render(busy, recent=1)
    assert "Last runs (1)" in text
    assert "seifa_sa2-20261126T120000-dddddd" not in text


def test_system_figures_and_workers(busy: dict[str, Any]) -> None:
    system = _section(_render(busy), "System")
    assert "CPU 12.5%" in system and "memory 91.0%" in system
    assert "daemon RSS 50.2 MB, CPU time 1.2s" in system
    assert "disk /var/lib/ahgd 55.0% (3.0 GB free)" in system
    worker = _line_with(system, "5001")
    assert "transform" in worker and "90.0 MB" in worker and "50%" in worker


def test_no_daemon_says_so_and_every_section_says_none(idle: dict[str, Any]) -> None:
    text = _render(idle, state_dir="/srv/ahgd/state")
    assert text.splitlines()[0] == "no daemon running on /srv/ahgd/state \u2014 history only"
    for title in ("Active runs (0)", "Open alerts (0)", "Last runs (0)", "System"):
        assert _section(text, title).splitlines()[1] == "  none", title


def test_no_daemon_still_shows_last_runs_and_alerts(busy: dict[str, Any]) -> None:
    busy.update(daemon=None, system=None, active_runs=[])
    text = _render(busy, state_dir="/var/lib/ahgd")
    assert "no daemon running on /var/lib/ahgd" in text
    assert "failed at stage 'validate'" in text
    assert "seifa_sa2 failed at validate" in text


def test_missing_and_null_optional_keys_do_not_crash(busy: dict[str, Any]) -> None:
    sparse = copy.deepcopy(busy)
    del sparse["generated_at"], sparse["queue"], sparse["thresholds"]
    sparse["daemon"] = {"pid": 1}
    sparse["active_runs"] = [{"run_id": "r1"}, {}]
    sparse["recent_runs"] = {"p": [{"run_id": "r2", "state": "FAILED", "error": None, "failed_stage": None}],
                             "q": None}
    sparse["alerts"] = {"open": [{"severity": None, "message": None, "raised_at": None}]}
    sparse["system"] = {"disks": None, "workers": [{"pid": None}], "cpu_percent": float("nan")}
    text = _render(sparse)
    assert "ahgd daemon pid 1" in text
    assert "queue ? pending" in text
    assert "r1" in text and "r2" in text
    assert _render({}).splitlines()[0] == "no daemon running on this state directory \u2014 history only"
    junk = {"daemon": None, "queue": None, "alerts": None, "recent_runs": [], "thresholds": None,
            "active_runs": None, "system": None, "generated_at": "not a time"}
    assert "Last runs (0)" in _render(junk)


def test_markup_like_text_from_the_log_is_printed_verbatim(busy: dict[str, Any]) -> None:
    busy["recent_runs"]["seifa_sa2"][0]["error"] = "KeyError: [/] [bold]not markup[/bold] :smile:"
    assert "KeyError: [/] [bold]not markup[/bold] :smile:" in _render(busy)


def test_piped_console_without_a_terminal_renders_plain_text(busy: dict[str, Any]) -> None:
    out = io.StringIO()
    render_status(busy, console=Console(file=out, width=100))
    text = out.getvalue()
    assert "\x1b[" not in text
    assert "1/3 33%" in text


def test_relative_times_come_from_generated_at_not_the_clock(busy: dict[str, Any]) -> None:
    busy["generated_at"] = "2026-11-26T15:05:00Z"
    assert "1h 00m ago" in _line_with(_render(busy), "run_failed")


@pytest.mark.parametrize(("seconds", "shown"), [
    (3.24, "3.2s"), (0, "0.0s"), (59.96, "1m 00s"), (65, "1m 05s"), (3600, "1h 00m"),
    (90061, "1d 01h"), (None, "-"), (-1, "-"), ("12", "-"), (True, "-"),
])
def test_duration_format(seconds: Any, shown: str) -> None:
    assert _duration(seconds) == shown


def test_ascii_only_stream_gets_ascii_glyphs(busy: dict[str, Any]) -> None:
    busy["recent_runs"]["seifa_sa2"][0]["error"] = LONG_ERROR
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    render_status(busy, console=Console(file=stream, width=100))
    stream.flush()
    text = raw.getvalue().decode("ascii")
    assert "workers 2/2 busy; queue 4 pending, 2 running, 1 parked; 3 files waiting" in text
    assert _line_with(text, "failed at stage 'validate'").endswith("x...")
