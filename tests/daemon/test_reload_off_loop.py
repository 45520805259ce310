"""A configuration reload does not stop the daemon's loop while it loads.

On SIGHUP the daemon loads the configuration again, and its import check (a
fresh Python importing every stage module) may take up to a minute.  That load
runs beside the main loop: systemd's watchdog keeps being pinged (with
``WatchdogSec=30`` a slow import would otherwise get the daemon killed in the
middle of a reload), and files keep being taken and run under the configuration
in force.  Only when the load has finished is the new configuration applied.

The real daemon, a notify socket of the test's own, and a stage module whose
import waits while a hold file exists (at most 60 s).
"""

from __future__ import annotations

import signal
import socket
import textwrap
import threading
import time
from pathlib import Path

from .harness import REPO, Daemon, drop_csv, query, wait_until, write_config

SLOW_MODULE = '''\
import os
import pathlib
import time

hold = pathlib.Path(os.environ["AHGD_TEST_IMPORT_HOLD"])
pathlib.Path(str(hold) + ".importing").touch()
deadline = time.monotonic() + 60
while hold.exists() and time.monotonic() < deadline:  # the import takes as long as the test says
    time.sleep(0.05)

from tests.daemon.stages import CountLoader as Loader  # noqa: E402
'''


def _setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(state dir, master file of one pipeline, a folder holding the slow module, its hold)."""
    state = tmp_path / "state"
    state.mkdir()
    config = write_config(tmp_path)
    code = tmp_path / "code"
    code.mkdir()
    (code / "slow_import_stages.py").write_text(SLOW_MODULE)
    return state, config, code, tmp_path / "import.hold"


def _add_slow_pipeline(tmp_path: Path, config: Path) -> None:
    """A second pipeline whose stage module takes as long to import as the test holds it."""
    (tmp_path / "slowpipe.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: slowpipe}
        stages:
          - {name: load, type: loader, class: slow_import_stages.Loader}
        """))
    config.write_text(config.read_text().replace(
        "pipelines:\n", "pipelines:\n  - {name: slowpipe, config_file: slowpipe.yaml}\n"))


def test_the_loop_goes_on_while_a_reload_loads(tmp_path: Path):
    state, config, code, hold = _setup(tmp_path)

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.1)
    messages: list[tuple[float, str]] = []  # (when received, the datagram)
    listening = threading.Event()

    def listen() -> None:  # received as they come: their times are the daemon's pings
        while not listening.is_set():
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass

    def drain() -> list[str]:
        return [m for _, m in list(messages)]

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()

    d = Daemon(config, state, extra_env={
        "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000",  # a ping every second
        "PYTHONPATH": f"{REPO}:{code}", "AHGD_TEST_IMPORT_HOLD": str(hold)})
    try:
        wait_until(lambda: any("READY=1" in m for m in drain()), 60, "READY=1")
        _add_slow_pipeline(tmp_path, config)
        hold.touch()
        d.signal(signal.SIGHUP)
        wait_until(lambda: any("RELOADING=1" in m for m in drain()), 30, "RELOADING=1")
        wait_until(lambda: Path(f"{hold}.importing").exists(), 60,
                   "the import check to start importing the slow module")

        # while the load is held: the watchdog is pinged and a dropped file is run
        held_from = time.monotonic()
        drop_csv(state / "inbox" / "csvpipe", "during.csv")
        wait_until(lambda: query(state, "SELECT 1 FROM runs WHERE state = 'COMPLETED'"), 60,
                   "a run under the configuration in force, during the reload")
        wait_until(lambda: time.monotonic() - held_from > 4, 30, "four seconds")
        assert hold.exists()  # the load was still held all this time
        now = time.monotonic()
        pings = [t for t, m in list(messages) if t >= held_from and "WATCHDOG=1" in m]
        assert len(pings) >= 3, (pings, drain())
        gaps = [b - a for a, b in zip([held_from, *pings], [*pings, now])]
        assert max(gaps) < 2.0, gaps  # never as long as WatchdogSec without a ping
        assert not any(r.get("event") == "config_reloaded" for r in d.records())
        d.signal(signal.SIGHUP)  # another during the load: it waits for this one, then loads
        wait_until(lambda: any(r.get("event") == "config_reload_queued" for r in d.records()),
                   30, "the second SIGHUP to be queued")

        hold.unlink()  # the import finishes: the new configuration is applied
        wait_until(lambda: any(r.get("event") in ("config_reloaded", "daemon.config_reload_failed")
                               for r in d.records()), 60, "the reload")
        failed = [r for r in d.records() if r.get("event") == "daemon.config_reload_failed"]
        assert not failed, failed[0]["error"]
        reloaded = next(r for r in d.records() if r.get("event") == "config_reloaded")
        assert reloaded["pipelines"] == ["csvpipe", "slowpipe"]
        wait_until(lambda: sum("READY=1" in m for m in drain()) >= 2, 30, "READY=1 again")
        # the queued SIGHUP's load, once the first is applied
        wait_until(lambda: sum(r.get("event") == "config_reloaded" for r in d.records()) == 2,
                   60, "the queued reload")
        assert sum("RELOADING=1" in m for m in drain()) == 2
    finally:
        hold.unlink(missing_ok=True)
        assert d.stop() == 0, d.output()
        listening.set()
        listener.join(5)
        sock.close()


def test_a_load_that_does_not_finish_is_said_and_a_new_sighup_starts_another(tmp_path: Path,
                                                                             monkeypatch):
    """The daemon in this process (its RELOAD_STUCK_S made 1 s): a load held past it raises
    daemon.config_reload_failed once, the configuration in force stays, and a SIGHUP then
    starts a new load (the held one is left to itself); the new one, finishing, is applied."""
    from ahgd_daemon import daemon as daemon_module

    monkeypatch.setattr(daemon_module, "RELOAD_STUCK_S", 1.0)
    state, config, code, hold = _setup(tmp_path)
    monkeypatch.syspath_prepend(str(code))  # the import check's child gets our sys.path
    monkeypatch.setenv("AHGD_TEST_IMPORT_HOLD", str(hold))
    d = daemon_module.Daemon(daemon_module.DaemonOptions(
        config_paths=[config], state_dir=state, install_signals=False, json_logs=False))
    runner = threading.Thread(target=d.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: d.runs is not None and not d._recovering, 60, "the daemon to start")
        _add_slow_pipeline(tmp_path, config)
        hold.touch()
        d._request_reload()
        wait_until(lambda: query(state, "SELECT message FROM alerts WHERE state = 'FIRING' "
                                        "AND name = 'daemon.config_reload_failed'"),
                   60, "the alert about the load that does not finish")
        [(message,)] = query(state, "SELECT message FROM alerts WHERE state = 'FIRING'")
        assert "the configuration load has not finished after 1s" in message, message
        assert sorted(d.setup.pipelines) == ["csvpipe"]  # the configuration in force stays
        held = d._reloading
        d._request_reload()  # the held load is left to itself; a new one starts
        wait_until(lambda: d._reloading is not held, 30, "a new load")
        hold.unlink()  # both imports finish now: the new load is applied
        wait_until(lambda: sorted(d.setup.pipelines) == ["csvpipe", "slowpipe"], 60,
                   "the new configuration")
        wait_until(lambda: query(state, "SELECT state FROM alerts WHERE name = "
                                        "'daemon.config_reload_failed'") == [("RESOLVED",)],
                   30, "the alert to resolve")
    finally:
        hold.unlink(missing_ok=True)
        d.request_stop()
        runner.join(60)
        assert not runner.is_alive()
