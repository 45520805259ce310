"""Alerts raised by the real daemon: thresholds from the master file, applied on SIGHUP,
resolved when the condition clears, recorded in the event log, one line each."""

from __future__ import annotations

import signal
import time

import pytest

from .harness import Daemon, query, wait_until, write_config

pytestmark = pytest.mark.slow


def test_disk_threshold_from_config_fires_once_and_resolves_on_reload(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    # memory_percent off: its 85 % default can fire on a busy host and add to the alerts below
    master = write_config(tmp_path, daemon=", monitoring: {sample_interval: PT0.2S, thresholds: "
                                           "{disk_percent: 0.01, memory_percent: null}}")
    d = Daemon(master, state).wait_ready()
    try:
        def alert_lines(state_: str) -> list[dict]:
            return [r for r in d.records() if r.get("event") == "system.disk_nearly_full"
                    and r.get("alert_state") == state_]

        wait_until(lambda: alert_lines("firing"), 20, "the disk alert")
        wait_until(lambda: len(query(state, "SELECT 1 FROM alerts")) == 1, 20, "its event")
        time.sleep(1.0)              # five more samples above the threshold: still one alert
        d.signal(signal.SIGHUP)      # same config: the alert stays open, nothing new
        wait_until(lambda: any(r.get("event") == "config_reloaded" for r in d.records()), 20,
                   "the first reload")
        master.write_text(master.read_text().replace("disk_percent: 0.01", "disk_percent: 100"))
        d.signal(signal.SIGHUP)
        wait_until(lambda: alert_lines("resolved"), 20, "the alert to resolve")
        [firing], [resolved] = alert_lines("firing"), alert_lines("resolved")
        assert firing["alert_id"] == resolved["alert_id"] == f"system.disk_nearly_full:{state}"
        assert firing["severity"] == "error" and firing["threshold"] == 0.01
        assert resolved["detail"].startswith(f"use of the disk holding {state} is back to ")
    finally:
        assert d.stop() == 0
    assert query(state, "SELECT type FROM events WHERE type LIKE 'alert.%' ORDER BY seq") == [
        ("alert.raised",), ("alert.resolved",)]
    assert query(state, "SELECT state, times_raised FROM alerts") == [("RESOLVED", 1)]
