"""The real daemon as a subprocess: drop folders, crash recovery, signals, schedules, logs."""

from __future__ import annotations

import calendar
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .harness import (Daemon, ahgd_exe, drop_csv, env, query, traces, wait_until, write_config)

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tmp_path: Path):
    """A config directory and an empty state directory side by side."""
    state = tmp_path / "state"
    state.mkdir()
    return tmp_path, state


def _runs(state: Path) -> list[tuple]:
    return query(state, "SELECT run_id, state, trigger FROM runs ORDER BY requested_at")


def test_slow_file_is_taken_after_close_duplicates_and_empty_files(setup):
    tmp, state = setup
    config = write_config(tmp)
    d = Daemon(config, state).wait_ready()
    try:
        inbox = state / "inbox" / "csvpipe"
        path = inbox / "slow.csv"
        with open(path, "w") as f:  # written in chunks, pausing longer than stable_for
            f.write("a,b\n")
            for i in range(4):
                f.flush()
                time.sleep(0.4)
                f.write(f"{i},{i * 2}\n")
            closed_at = time.time()
        wait_until(lambda: query(state, "SELECT state FROM runs WHERE state = 'COMPLETED'"), 30,
                   "the run of slow.csv to complete")
        arrived = query(state, "SELECT ts, payload FROM events WHERE type = 'file.arrived'")
        assert len(arrived) == 1
        ts = calendar.timegm(time.strptime(arrived[0][0][:19], "%Y-%m-%dT%H:%M:%S"))
        assert ts + 1 >= closed_at  # not taken while it was still being written
        assert json.loads(arrived[0][1])["size"] == path.stat().st_size if path.exists() else True
        rows = [t for t in traces(state) if t["stage"] == "load" and t["event"] == "done"]
        assert rows[0]["rows"] == 4  # the whole file, not a prefix
        # the same bytes again: a duplicate, not a second run
        (tmp / "copy.csv").write_bytes((state / "files").rglob("slow.csv").__next__().read_bytes())
        os.rename(tmp / "copy.csv", inbox / "again.csv")
        wait_until(lambda: query(state, "SELECT 1 FROM events WHERE type = 'file.duplicate'"), 20,
                   "the duplicate to be recorded")
        assert len(_runs(state)) == 1
        assert (state / "duplicates" / "csvpipe" / "again.csv").exists()
        # an empty file is quarantined with its reason
        (inbox / "empty.csv").touch()
        reason = state / "quarantine" / "csvpipe" / "empty.csv.reason.json"
        wait_until(reason.exists, 20, "the empty file to be quarantined")
        assert json.loads(reason.read_text())["reason"] == "the file is empty (0 bytes)"
        assert (state / "quarantine" / "csvpipe" / "empty.csv").exists()
        # hidden and temporary files are ignored
        (inbox / ".hidden.csv").write_text("a,b\n1,2\n")
        (inbox / "draft.csv.part").write_text("a,b\n1,2\n")
        time.sleep(1.0)
        assert (inbox / ".hidden.csv").exists() and (inbox / "draft.csv.part").exists()
    finally:
        assert d.stop() == 0
    for line in d.output().splitlines():  # the log parses line by line
        record = json.loads(line)
        assert {"timestamp", "level", "event"} <= set(record)
    assert "database is locked" not in d.output()
    alerts = [r for r in d.records() if r.get("alert")]
    assert any(a["event"] == "file.quarantined" and a["severity"] == "warning" for a in alerts)


def test_files_dropped_while_down_are_processed_at_start(setup):
    tmp, state = setup
    config = write_config(tmp)
    for i in range(3):
        drop_csv(state / "inbox" / "csvpipe", f"f{i}.csv", rows=i + 1, seed=i)
    d = Daemon(config, state, once=True)
    assert d.wait(timeout=120) == 0, d.output()
    assert sorted(r[1] for r in _runs(state)) == ["COMPLETED"] * 3
    assert not list((state / "inbox" / "csvpipe").glob("*.csv"))


def test_a_second_daemon_refuses_and_a_killed_ones_lock_does_not_block(setup):
    tmp, state = setup
    config = write_config(tmp)
    first = Daemon(config, state).wait_ready()
    try:
        second = subprocess.run([*ahgd_exe(), "daemon", "--config", str(config), "--state-dir",
                                 str(state)], capture_output=True, text=True, timeout=60, env=env())
        assert second.returncode == 1
        assert f"another ahgd daemon is already running on {state}: ahgd daemon pid {first.proc.pid}" \
            in second.stderr
        import psutil

        workers = wait_until(lambda: psutil.Process(first.proc.pid).children(), 30, "warm workers")
    finally:
        first.kill()
    # its workers die with it (no orphan keeps running a stage)
    wait_until(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers),
               10, "the killed daemon's workers to exit")
    third = Daemon(config, state).wait_ready()
    assert third.stop() == 0


def test_sigkill_loop_resumes_runs_without_rerunning_completed_stages(setup):
    tmp, state = setup
    config = write_config(tmp, transform={"sleep": 1.5}, load={"sleep": 0.3},
                          daemon=", max_recoveries: 100")
    rng = random.Random(5)
    inbox = state / "inbox" / "csvpipe"
    dropped = []
    deadline = time.monotonic() + 300
    for kill in range(12):  # a new file each round, so there is always work in flight
        assert time.monotonic() < deadline, "the crash loop took too long"
        dropped.append(drop_csv(inbox, f"k{kill}.csv", rows=2, seed=kill).name)
        d = Daemon(config, state).wait_ready()
        time.sleep(rng.uniform(0.1, 2.0))
        d.kill()
    final = Daemon(config, state, once=True)
    assert final.wait(timeout=180) == 0, final.output()
    runs = query(state, "SELECT run_id, state, recoveries FROM runs")
    assert len(runs) == len(dropped) and all(r[1] == "COMPLETED" for r in runs)
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'file.arrived'")[0][0] == len(dropped)
    # a stage never starts again once its completion is recorded
    late = query(state, """SELECT s.run_id, s.stage FROM events s JOIN events c
        ON c.run_id = s.run_id AND c.stage = s.stage AND c.type = 'stage.completed'
        WHERE s.type = 'stage.started' AND s.seq > c.seq""")
    assert late == []
    # and in the workers' own trace: no execution of a stage began after its recorded completion
    completed = {(r, s): ts for r, s, ts in query(
        state, "SELECT run_id, stage, ts FROM events WHERE type = 'stage.completed'")}
    for t in traces(state):
        ts = completed.get((t["run_id"], t["stage"]))
        if t["event"] == "start" and ts is not None:
            done_at = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
            assert t["t"] <= done_at + 1.0, f"{t} started after its completion was recorded"
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'run.recovered'")[0][0] >= 1
    check = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=60, env=env())
    assert check.returncode == 0, check.stderr


def test_three_hundred_files_at_once(setup):
    tmp, state = setup
    config = write_config(tmp, stable_for="PT0.2S")
    inbox = state / "inbox" / "csvpipe"
    d = Daemon(config, state).wait_ready()
    try:
        for i in range(300):
            drop_csv(inbox, f"burst{i:03d}.csv", rows=1, seed=i)
        wait_until(lambda: query(state, "SELECT COUNT(*) FROM runs WHERE state = 'COMPLETED'")[0][0] == 300,
                   400, "300 runs to complete", interval=0.5)
    finally:
        assert d.stop() == 0
    spans = query(state, "SELECT started_at, ended_at FROM stage_timings")
    assert len(spans) == 900
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: (p[0], p[1]))
    live = peak = 0
    for _, step in points:
        live += step
        peak = max(peak, live)
    assert peak <= 2, f"{peak} stages ran at once with max_workers 2"
    assert "database is locked" not in d.output()
    assert query(state, "SELECT COUNT(*) FROM files")[0][0] == 300


def test_sigterm_during_a_run_exits_cleanly_and_the_next_start_resumes(setup):
    tmp, state = setup
    config = write_config(tmp, transform={"sleep": 60})
    drop_csv(state / "inbox" / "csvpipe", "t.csv")
    d = Daemon(config, state).wait_ready()
    wait_until(lambda: query(state, "SELECT 1 FROM events WHERE type = 'stage.started' AND stage = 'transform'"),
               30, "the slow stage to start")
    t0 = time.monotonic()
    assert d.stop(timeout=90) == 0
    # grace PT5S, then interrupted: far sooner than the stage's 60 s (loose for a loaded host)
    assert time.monotonic() - t0 < 5 + 25
    assert query(state, "SELECT state FROM runs") == [("PENDING",)]
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'run.suspended'")[0][0] == 1
    assert query(state, "SELECT state FROM stage_runs WHERE stage = 'transform'") == [("INTERRUPTED",)]
    fast = write_config(tmp, transform={"sleep": 0})
    again = Daemon(fast, state, once=True)
    assert again.wait(timeout=120) == 0, again.output()
    assert query(state, "SELECT state FROM runs") == [("COMPLETED",)]
    extract_runs = [t for t in traces(state) if t["stage"] == "extract" and t["event"] == "start"]
    assert len(extract_runs) == 1  # extract was not redone


def test_sd_notify_ready_watchdog_stopping(setup):
    tmp, state = setup
    config = write_config(tmp)
    sock_path = tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    d = Daemon(config, state, extra_env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []

    def drain() -> list[str]:
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except socket.timeout:
            pass
        return messages

    try:
        wait_until(lambda: any("READY=1" in m for m in drain()), 30, "READY=1")
        wait_until(lambda: sum("WATCHDOG=1" in m for m in drain()) >= 2, 10, "two WATCHDOG=1 pings")
    finally:
        assert d.stop() == 0
    drain()
    sock.close()
    assert any("STOPPING=1" in m for m in messages)
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in messages)
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    recovering = [i for i, m in enumerate(messages) if "recovering" in m]
    assert recovering and recovering[0] < ready  # READY only after recovery


def test_sighup_with_a_broken_config_keeps_the_old_one(setup):
    tmp, state = setup
    config = write_config(tmp)
    d = Daemon(config, state).wait_ready()
    try:
        good = (tmp / "csvpipe.yaml").read_text()
        (tmp / "csvpipe.yaml").write_text(good.replace("stages:", "stagez:"))
        d.signal(signal.SIGHUP)
        wait_until(lambda: any(r.get("event") == "daemon.config_reload_failed" for r in d.records()), 20,
                   "the reload to fail")
        failed = next(r for r in d.records() if r.get("event") == "daemon.config_reload_failed")
        assert failed["alert"] is True and failed["severity"] == "error"
        assert "unknown key 'stagez'; did you mean 'stages'?" in failed["error"]
        drop_csv(state / "inbox" / "csvpipe", "still.csv")  # the old config still works
        wait_until(lambda: query(state, "SELECT 1 FROM runs WHERE state = 'COMPLETED'"), 30,
                   "a run under the old configuration")
        (tmp / "csvpipe.yaml").write_text(good)
        d.signal(signal.SIGHUP)
        wait_until(lambda: any(r.get("event") == "config_reloaded" for r in d.records()), 20,
                   "the reload to succeed")
    finally:
        assert d.stop() == 0


def test_schedule_fires_and_missed_ticks_follow_the_policy(setup):
    tmp, state = setup
    (tmp / "tick.yaml").write_text(
        "pipeline: {name: ticker}\n"
        "triggers:\n  - {type: schedule, interval: PT1S, misfire: latest}\n"
        "stages:\n  - {name: tick, type: extractor, class: tests.daemon.stages.Tick}\n")
    (tmp / "master.yaml").write_text("pipelines:\n  - {name: ticker, config_file: tick.yaml}\n")
    d = Daemon(tmp / "master.yaml", state).wait_ready()
    wait_until(lambda: len(query(state, "SELECT 1 FROM runs WHERE state = 'COMPLETED'")) >= 2, 30,
               "two scheduled runs")
    assert d.stop() == 0
    before = {r[0] for r in query(state, "SELECT run_id FROM runs")}
    assert all(r.startswith("sched-ticker-") for r in before)
    time.sleep(3.5)  # about three ticks are missed
    again = Daemon(tmp / "master.yaml", state, once=True)
    assert again.wait(timeout=60) == 0, again.output()
    caught = query(state, "SELECT json_extract(payload, '$.catch_up') FROM events WHERE "
                          "type = 'schedule.fired' AND seq > (SELECT MAX(seq) FROM events WHERE "
                          "run_id IN (%s))" % ",".join(f"'{r}'" for r in before))
    assert [c[0] for c in caught] == [1]  # latest: exactly one catch-up run
    # policy `all`: every missed tick runs
    (tmp / "tick.yaml").write_text((tmp / "tick.yaml").read_text().replace("latest", "all"))
    time.sleep(3.2)
    n_before = len(query(state, "SELECT 1 FROM runs"))
    third = Daemon(tmp / "master.yaml", state, once=True)
    assert third.wait(timeout=60) == 0, third.output()
    assert len(query(state, "SELECT 1 FROM runs")) - n_before >= 3
    ids = [r[0] for r in query(state, "SELECT run_id FROM runs")]
    assert len(ids) == len(set(ids))


def test_a_run_that_keeps_crashing_the_daemon_is_parked_and_retry_unparks(setup):
    tmp, state = setup
    config = write_config(tmp, transform={"sleep": 30}, daemon=", max_recoveries: 1")
    drop_csv(state / "inbox" / "csvpipe", "p.csv")
    for _ in range(3):
        d = Daemon(config, state).wait_ready()
        wait_until(lambda: query(state, "SELECT 1 FROM runs WHERE state IN ('RUNNING', 'PARKED')"),
                   30, "the run to start or be parked")
        if query(state, "SELECT 1 FROM runs WHERE state = 'PARKED'"):
            d.stop()
            break
        wait_until(lambda: query(state, "SELECT 1 FROM stage_runs WHERE stage = 'transform' AND state = 'RUNNING'"),
                   30, "the slow stage")
        d.kill()
    [(run_id, state_, error)] = query(state, "SELECT run_id, state, error FROM runs")
    assert state_ == "PARKED"
    assert error.startswith("run was interrupted by a crash 2 times (limit 1)")
    assert f"`ahgd retry {run_id}`" in error
    fast = write_config(tmp, transform={"sleep": 0}, daemon=", max_recoveries: 1")
    proc = subprocess.run([*ahgd_exe(), "retry", run_id, "--config", str(fast), "--state-dir",
                           str(state)], capture_output=True, text=True, timeout=120, env=env(), cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert query(state, "SELECT state, retries FROM runs") == [("COMPLETED", 1)]


def test_cli_requests_go_to_a_running_daemon(setup):
    tmp, state = setup
    config = write_config(tmp)
    src = tmp / "manual.csv"
    src.write_text("a,b\n1,2\n")
    d = Daemon(config, state).wait_ready()
    try:
        proc = subprocess.run([*ahgd_exe(), "run", "csvpipe", "--input", str(src), "--state-dir",
                               str(state)], capture_output=True, text=True, timeout=120, env=env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "requested run" in proc.stdout and "COMPLETED" in proc.stdout
        status = subprocess.run([*ahgd_exe(), "status", "--json", "--state-dir", str(state)],
                                capture_output=True, text=True, timeout=60, env=env())
        info = json.loads(status.stdout)
        assert info["daemon"]["pid"] == d.proc.pid and info["daemon"]["healthy"] is True
        [run] = info["recent_runs"]["csvpipe"]
        assert run["state"] == "COMPLETED"
        view = subprocess.run([*ahgd_exe(), "status", "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=60, env=env({"COLUMNS": "200"}))
        assert view.returncode == 0, view.stderr
        assert f"ahgd daemon pid {d.proc.pid}" in view.stdout
        assert "Active runs (0)" in view.stdout and run["run_id"] in view.stdout
        metrics = subprocess.run([*ahgd_exe(), "metrics", "--state-dir", str(state)],
                                 capture_output=True, text=True, timeout=60, env=env())
        assert metrics.returncode == 0, metrics.stderr
        assert "# TYPE ahgd_" in metrics.stdout
        assert 'ahgd_runs_total{pipeline="csvpipe",state="COMPLETED"} 1.0' in metrics.stdout
        bad = subprocess.run([*ahgd_exe(), "run", "nosuch", "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=60, env=env())
        assert bad.returncode == 1
        assert "no pipeline 'nosuch' in the configuration (known: csvpipe)" in bad.stderr
    finally:
        assert d.stop() == 0
    [(trigger, params)] = query(state, "SELECT trigger, params FROM runs")
    assert trigger == "manual" and json.loads(params)["original_name"] == "manual.csv"
    before = (state / "history.db").stat().st_mtime_ns, query(state, "SELECT COUNT(*) FROM events")
    history = subprocess.run([*ahgd_exe(), "status", "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=60, env=env({"COLUMNS": "200"}))
    assert history.returncode == 0, history.stderr
    assert f"no daemon running on {state}" in history.stdout and "COMPLETED" in history.stdout
    metrics = subprocess.run([*ahgd_exe(), "metrics", "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=60, env=env())
    assert 'ahgd_runs_total{pipeline="csvpipe",state="COMPLETED"} 1.0' in metrics.stdout
    assert "ahgd_process_" not in metrics.stdout  # the CLI's own process is not the daemon
    # a look at the history writes nothing
    assert ((state / "history.db").stat().st_mtime_ns,
            query(state, "SELECT COUNT(*) FROM events")) == before


def test_cli_runs_in_the_foreground_without_a_daemon_and_cancel(setup):
    tmp, state = setup
    config = write_config(tmp)
    src = tmp / "manual.csv"
    src.write_text("a,b\n1,2\n3,4\n")
    proc = subprocess.run([*ahgd_exe(), "run", "csvpipe", "--config", str(config), "--input", str(src),
                           "--state-dir", str(state)], capture_output=True, text=True, timeout=120,
                          env=env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "running csvpipe-" in proc.stdout and "COMPLETED" in proc.stdout
    # a wrong resume point is refused before anything runs
    proc = subprocess.run([*ahgd_exe(), "run", "csvpipe", "--config", str(config), "--resume-from",
                           "lod", "--state-dir", str(state)], capture_output=True, text=True,
                          timeout=120, env=env())
    assert proc.returncode == 1
    assert ("pipeline 'csvpipe' has no stage 'lod' to resume from; did you mean 'load'? (its "
            "stages: extract, transform, load)") in proc.stderr
    proc = subprocess.run([*ahgd_exe(), "run", "csvpipe", "--config", str(config), "--resume-from",
                           "load", "--state-dir", str(state)], capture_output=True, text=True,
                          timeout=120, env=env())
    assert proc.returncode == 0, proc.stderr
    reused = query(state, "SELECT stage FROM events WHERE type = 'stage.reused' ORDER BY seq")
    assert reused == [("extract",), ("transform",)]
    cancel = subprocess.run([*ahgd_exe(), "cancel", "nope", "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=60, env=env())
    assert cancel.returncode == 1 and "no run 'nope' in this state directory" in cancel.stderr


def test_wrong_file_is_quarantined_when_extract_fails_validation(setup):
    tmp, state = setup
    config = write_config(tmp, extract={"required": ["sa2_code"]},
                          trigger=", quarantine_on_extract_failure: true")
    drop_csv(state / "inbox" / "csvpipe", "wrong.csv")
    d = Daemon(config, state, once=True)
    assert d.wait(timeout=120) == 1  # the run failed
    reason = json.loads((state / "quarantine" / "csvpipe" / "wrong.csv.reason.json").read_text())
    assert "failed at stage 'extract'" in reason["reason"] and "missing columns: sa2_code" in reason["reason"]
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'file.quarantined'")[0][0] == 1


def test_disk_nearly_full_is_an_alert(setup):
    tmp, state = setup
    config = write_config(tmp, daemon=", disk_alert_percent: 0.01")
    d = Daemon(config, state).wait_ready()
    try:
        wait_until(lambda: any(r.get("event") == "system.disk_nearly_full" for r in d.records()), 20,
                   "the disk alert")
    finally:
        assert d.stop() == 0
    alert = next(r for r in d.records() if r.get("event") == "system.disk_nearly_full")
    assert alert["alert"] is True and alert["severity"] == "error"


def test_allow_duplicates_runs_the_same_bytes_again(setup):
    tmp, state = setup
    config = write_config(tmp, trigger=", allow_duplicates: true")
    inbox = state / "inbox" / "csvpipe"
    d = Daemon(config, state).wait_ready()
    try:
        drop_csv(inbox, "monday.csv", seed=1)
        wait_until(lambda: query(state, "SELECT 1 FROM runs WHERE state = 'COMPLETED'"), 30, "run 1")
        drop_csv(inbox, "tuesday.csv", seed=1)  # the same bytes
        wait_until(lambda: len(query(state, "SELECT 1 FROM runs WHERE state = 'COMPLETED'")) == 2, 30,
                   "run 2")
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
    assert query(state, "SELECT type FROM events WHERE type LIKE 'file.%' ORDER BY seq") == [
        ("file.arrived",), ("file.duplicate",)]


def test_a_quarantined_file_dropped_again_is_taken_again(setup):
    tmp, state = setup
    config = write_config(tmp, extract={"required": ["sa2_code"]},
                          trigger=", quarantine_on_extract_failure: true")
    for attempt in range(2):
        drop_csv(state / "inbox" / "csvpipe", "wrong.csv")  # the same bytes both times
        d = Daemon(config, state, once=True)
        assert d.wait(timeout=120) == 1
    assert query(state, "SELECT COUNT(*) FROM runs WHERE state = 'FAILED'") == [(2,)]
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'file.quarantined'") == [(2,)]


def test_a_manual_input_is_not_taken_for_a_dropped_file_after_a_restart(setup):
    tmp, state = setup
    config = write_config(tmp)
    src = tmp / "manual.csv"
    src.write_text("a,b\n1,2\n")
    proc = subprocess.run([*ahgd_exe(), "run", "csvpipe", "--config", str(config), "--input", str(src),
                           "--state-dir", str(state)], capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode == 0, proc.stderr
    again = Daemon(config, state, once=True)
    assert again.wait(timeout=120) == 0, again.output()
    assert query(state, "SELECT trigger FROM runs") == [("manual",)]


def test_sighup_with_a_folder_that_cannot_be_created_keeps_the_old_config(setup):
    tmp, state = setup
    config = write_config(tmp)
    d = Daemon(config, state).wait_ready()
    try:
        text = (tmp / "csvpipe.yaml").read_text()
        (tmp / "csvpipe.yaml").write_text(text.replace('"${state_dir}/inbox/csvpipe"', '"/proc/ahgd-inbox"'))
        d.signal(signal.SIGHUP)
        wait_until(lambda: any(r.get("event") == "daemon.config_reload_failed" for r in d.records()), 20,
                   "the reload to fail")
        assert d.proc.poll() is None
        drop_csv(state / "inbox" / "csvpipe", "still.csv")
        wait_until(lambda: query(state, "SELECT 1 FROM runs WHERE state = 'COMPLETED'"), 30,
                   "a run under the old configuration")
    finally:
        assert d.stop() == 0


def test_ctrl_c_cancels_a_foreground_run(setup):
    tmp, state = setup
    config = write_config(tmp, transform={"sleep": 30})
    src = tmp / "in.csv"
    src.write_text("a,b\n1,2\n")
    proc = subprocess.Popen([*ahgd_exe(), "run", "csvpipe", "--config", str(config), "--input", str(src),
                             "--state-dir", str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())
    try:
        wait_until(lambda: query(state, "SELECT 1 FROM stage_runs WHERE stage = 'transform' AND state = 'RUNNING'"),
                   60, "the slow stage")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "CANCELLED" in out
    assert query(state, "SELECT state, error FROM runs") == [("CANCELLED", "cancelled with Ctrl-C")]
    assert query(state, "SELECT state FROM stage_runs WHERE stage = 'transform'") == [("INTERRUPTED",)]


def test_retry_without_config_and_without_daemon_changes_nothing(setup):
    tmp, state = setup
    config = write_config(tmp, extract={"required": ["nope"]})
    src = tmp / "in.csv"
    src.write_text("a,b\n1,2\n")
    subprocess.run([*ahgd_exe(), "run", "csvpipe", "--config", str(config), "--input", str(src),
                    "--state-dir", str(state)], capture_output=True, timeout=120, env=env())
    [(run_id, run_state)] = query(state, "SELECT run_id, state FROM runs")
    assert run_state == "FAILED"
    proc = subprocess.run([*ahgd_exe(), "retry", run_id, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 1 and "--config is needed" in proc.stderr
    assert query(state, "SELECT state FROM runs") == [("FAILED",)]


def test_http_status_endpoint_on_loopback(setup):
    import urllib.request

    tmp, state = setup
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp, daemon=f", status_listen: '127.0.0.1:{port}'")
    d = Daemon(config, state).wait_ready()
    try:
        base = f"http://127.0.0.1:{port}"
        status = json.loads(urllib.request.urlopen(f"{base}/status", timeout=10).read())
        assert status["pid"] == d.proc.pid and status["pipelines"] == ["csvpipe"]
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
        assert "# TYPE ahgd_" in metrics
        assert urllib.request.urlopen(f"{base}/healthz", timeout=10).read() == b"ok\n"
    finally:
        assert d.stop() == 0
