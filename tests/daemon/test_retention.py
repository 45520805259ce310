"""Retention (issue 14): with a clock the test controls, collection removes exactly what the
``retain:`` policy says and nothing else, records each removal, and a run that needs what
went is refused, naming it, while a FAILED run inside its retry window loses nothing.

Real runs (in this process, real SQLite and DuckDB), real files; only the collector's clock
is moved forward."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ahgd_daemon.requests import RequestError, retry
from state import EventType as T
from state.machine import RunState
from tests.daemon.harness import traces
from tests.daemon.retention_kit import Kit, days, write_configs

RETAIN = ("successful_runs: 2, inputs_for: P1D, duplicates_for: P2D, quarantine_for: P3D, "
          "failed_runs_for: P5D, logs_for: P10D")


@pytest.fixture
def kit(tmp_path: Path):
    k = Kit(write_configs(tmp_path, RETAIN), tmp_path / "state")
    yield k
    k.close()


def _set_aside(kit: Kit) -> None:
    sd = kit.state_dir
    (sd / "duplicates" / "csvpipe").mkdir(parents=True)
    (sd / "duplicates" / "csvpipe" / "again.csv").write_text("code\n1\n")
    (sd / "quarantine" / "csvpipe").mkdir(parents=True)
    (sd / "quarantine" / "csvpipe" / "bad.csv").write_text("x\n")
    (sd / "quarantine" / "csvpipe" / "bad.csv.reason.json").write_text("{}")
    (sd / "tmp" / "duckdb").mkdir(parents=True, exist_ok=True)
    old = sd / "tmp" / "duckdb" / "spill-old.tmp"
    old.write_bytes(b"x" * 100)
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    (sd / "tmp" / "duckdb" / "spill-new.tmp").write_bytes(b"x" * 100)
    (sd / "data" / "stray").mkdir()
    (sd / "data" / "stray" / "mine.duckdb").write_bytes(b"keep")


def _logs(kit: Kit, *run_ids: str) -> None:
    (kit.state_dir / "logs").mkdir(exist_ok=True)
    for run_id in run_ids:
        path = kit.state_dir / "logs" / f"{run_id}.jsonl"
        if not path.exists():
            path.write_text(json.dumps({"event": "stage_started", "run_id": run_id}) + "\n")


def _collect(kit: Kit, after_days: float, **kw) -> list[tuple]:
    before = len(kit.removals())
    report = kit.collector(days(after_days)).run(**kw)
    assert report.finished
    return sorted(kit.removals()[before:], key=str)   # (a walk's order is the folders')


def test_collection_removes_exactly_what_the_policy_says(kit: Kit) -> None:
    kit.succeed(True)
    r1, r2, r3 = kit.run(), kit.run(), kit.run()
    kit.succeed(False)
    failed = kit.run()
    assert [kit.run_row(r).state for r in (r1, r2, r3, failed)] == ["COMPLETED"] * 3 + ["FAILED"]
    _set_aside(kit)
    _logs(kit, r1, r2, r3, failed)
    inputs = {r: kit.input_dir(r) for r in (r1, r2, r3, failed)}
    r1_bytes = sum(p.stat().st_size for p in (kit.state_dir / "data" / r1).iterdir())

    # half a day on: only r1's outputs (not among the 2 newest) and the stale DuckDB spill
    dry = kit.collector(days(0.5)).run(dry_run=True)
    assert sorted(i.path for i in dry.items) == [f"data/{r1}", "tmp/duckdb/spill-old.tmp"]
    assert kit.removals() == [] and r1 in kit.data_dirs()   # a dry run removes nothing
    assert _collect(kit, 0.5) == sorted([
        ("data.expired", r1, "data", f"data/{r1}"),
        ("file.expired", None, "tmp", "tmp/duckdb/spill-old.tmp")], key=str)
    assert kit.data_dirs() == {r2, r3, failed, "stray"}
    payload = kit.log.query("SELECT payload FROM events WHERE type = 'data.expired'")[0][0]
    payload = json.loads(payload)
    assert payload["bytes"] == r1_bytes and payload["files"] == 2
    assert payload["rule"] == "successful_runs" and "2 newest completed" in payload["reason"]
    assert (kit.state_dir / "tmp" / "duckdb" / "spill-new.tmp").exists()

    # a day and a half: the inputs of r1 and r2 (r3 is the newest's; the failed run's is kept)
    # (and the newer spill file: by the collector's clock, untouched for more than a day)
    assert _collect(kit, 1.5) == sorted([
        ("file.expired", r1, "inputs", _rel(kit, inputs[r1])),
        ("file.expired", r2, "inputs", _rel(kit, inputs[r2])),
        ("file.expired", None, "tmp", "tmp/duckdb/spill-new.tmp")], key=str)
    assert inputs[r3].exists() and inputs[failed].exists()
    assert _collect(kit, 2.5) == [("file.expired", None, "duplicates",
                                   "duplicates/csvpipe/again.csv")]
    assert _collect(kit, 3.5) == [("file.expired", None, "quarantine",
                                   "quarantine/csvpipe/bad.csv")]
    assert not (kit.state_dir / "quarantine" / "csvpipe" / "bad.csv.reason.json").exists()
    assert kit.data_dirs() == {r2, r3, failed, "stray"}   # the failed run: inside its window

    # six days: the failed run's retry window (P5D) is over: its outputs and input go
    assert _collect(kit, 6) == sorted([
        ("data.expired", failed, "data", f"data/{failed}"),
        ("file.expired", failed, "inputs", _rel(kit, inputs[failed]))], key=str)
    assert _collect(kit, 11) == sorted([("file.expired", r, "logs", f"logs/{r}.jsonl")
                                        for r in (r1, r2, r3, failed)], key=str)
    # never: the newest 2 completed runs' outputs, the newest one's input, an unknown folder
    assert _collect(kit, 400) == []
    assert kit.data_dirs() == {r2, r3, "stray"} and inputs[r3].exists()
    assert kit.log.check().ok


def _rel(kit: Kit, path: Path) -> str:
    return path.relative_to(kit.state_dir).as_posix()


def test_failed_run_inside_its_retry_window_keeps_what_a_retry_needs(kit: Kit) -> None:
    kit.succeed(True)
    kit.run(), kit.run(), kit.run()
    kit.succeed(False)
    failed = kit.run()
    removed = _collect(kit, 4)   # P5D window: nothing of the failed run goes
    assert failed not in {r[1] for r in removed} and removed
    kit.succeed(True)
    retry(kit.log, failed, kit.state_dir)
    assert kit.pipeline.execute_run(failed, log=kit.log).state == RunState.COMPLETED
    extracts = [t for t in traces(kit.state_dir) if t["run_id"] == failed
                and t["stage"] == "extract" and t["event"] == "start"]
    assert len(extracts) == 1   # its outputs were reused, not made again


def test_retry_of_a_run_whose_outputs_were_removed_is_refused_naming_them(kit: Kit) -> None:
    kit.succeed(True)
    kit.run()
    kit.succeed(False)
    failed = kit.run()
    _collect(kit, 6)
    events = kit.log.query("SELECT COUNT(*) FROM events")[0][0]
    with pytest.raises(RequestError) as refused:
        retry(kit.log, failed, kit.state_dir)
    message = str(refused.value)
    assert f"run {failed} cannot run again" in message
    assert f"data/{failed}/ (2 files," in message and "was removed by retention on " in message
    assert "retain.failed_runs_for" in message and "--input FILE" in message
    assert kit.log.query("SELECT COUNT(*) FROM events")[0][0] == events   # nothing recorded
    assert kit.run_row(failed).state == RunState.FAILED


def test_a_run_made_pending_without_the_check_fails_naming_the_removal(kit: Kit) -> None:
    """The engine itself tells removed by retention from damaged: no stage runs again."""
    kit.succeed(True)
    kit.run()
    kit.succeed(False)
    failed = kit.run()
    _collect(kit, 6)
    kit.succeed(True)
    retry(kit.log, failed)   # the Python API, which does not look
    before = len(traces(kit.state_dir))
    context = kit.pipeline.execute_run(failed, log=kit.log)
    assert context.state == RunState.FAILED
    assert "removed by retention" in context.error and "No stage ran again" in context.error
    assert len(traces(kit.state_dir)) == before
    types = [r[0] for r in kit.log.query("SELECT type FROM events WHERE run_id = ?", [failed])]
    assert T.STAGE_INVALIDATED not in types


def test_unfinished_runs_keep_everything_and_a_retry_meanwhile_puts_files_back(kit: Kit) -> None:
    kit.succeed(False)
    failed = kit.run()
    kit.succeed(True)
    kit.run()
    kit.run()
    items = [i for i in kit.collector(days(6)).run(dry_run=True).items if i.run_id == failed]
    assert {i.area for i in items} == {"data", "inputs"}
    retry(kit.log, failed, kit.state_dir)   # PENDING again between the plan and the removal
    collector = kit.collector(days(6))
    assert [collector.remove(i, "gc-test") for i in items] == [False, False]
    assert failed in kit.data_dirs() and kit.input_dir(failed).exists()
    assert not list((kit.state_dir / ".trash").glob("*"))
    assert failed not in {r[1] for r in _collect(kit, 60)}   # PENDING: nothing goes, however old
    assert kit.pipeline.execute_run(failed, log=kit.log).state == RunState.COMPLETED


def test_data_budget_removes_older_outputs_first_and_keeps_the_newest(tmp_path: Path) -> None:
    kit = Kit(write_configs(tmp_path, "successful_runs: 10, data_budget: 1"), tmp_path / "s")
    try:
        kit.succeed(True)
        runs = [kit.run() for _ in range(3)]
        report = kit.collector().run()
        assert [(i.run_id, i.rule) for i in report.items] == [(runs[0], "data_budget"),
                                                              (runs[1], "data_budget")]
        assert kit.data_dirs() == {runs[2]} and report.walk.over_budget > 0
    finally:
        kit.close()


def test_a_pipeline_file_overrides_the_master_retain(tmp_path: Path) -> None:
    master = write_configs(tmp_path, "successful_runs: 5", pipeline_retain="successful_runs: 1")
    kit = Kit(master, tmp_path / "s")
    try:
        kit.succeed(True)
        first, second = kit.run(), kit.run()
        assert [(i.run_id, i.rule) for i in kit.collector().run(dry_run=True).items] == [
            (first, "successful_runs")]
        assert kit.policy.of("csvpipe").successful_runs == 1 and second
    finally:
        kit.close()


def test_a_warehouse_rebuild_names_the_inputs_retention_removed(kit: Kit) -> None:
    from ahgd_daemon import rebuild

    kit.succeed(True)
    first, _, _ = kit.run(), kit.run(), kit.run()
    _collect(kit, 2)   # inputs_for P1D: the inputs of all but the newest run go
    with pytest.raises(RequestError) as refused:
        rebuild.plan(kit.log, kit.state_dir, kit.pipelines, {}, {}, only=["csvpipe"])
    assert f"(input of run {first}; removed by retention on " in str(refused.value)
    assert "(retain.inputs_for)" in str(refused.value)


class _Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []
        self.alerts: list[tuple] = []

    def info(self, event: str, **kw) -> None:
        self.lines.append((event, kw))

    warning = error = info

    def alert(self, *args, **kw) -> None:
        self.alerts.append(("alert", *args))

    def resolve(self, *args, **kw) -> None:
        self.alerts.append(("resolve", *args))


def test_the_disk_alert_starts_a_collection_at_once_that_goes_in_small_steps(kit: Kit) -> None:
    from ahgd_daemon.collection import DISK_ALERT, DaemonCollection
    from state import new_event

    kit.succeed(True)
    runs = [kit.run() for _ in range(4)]
    now = [1000.0]
    out, woken = _Lines(), []
    collection = DaemonCollection(kit.log, kit.state_dir, kit.policy, logger=out,
                                  wake=lambda: woken.append(1), alerts=out,
                                  clock=kit.collector().clock, monotonic=lambda: now[0])
    kit.log.add_listener(collection.on_event)
    now[0] += 10   # past the first collection's start: it runs, and the next is 15 min away
    while collection.ended == 0:
        collection.step()
    assert collection.sleep_hint() > 800 and runs[0] not in kit.data_dirs()
    collection.step()
    assert collection.ended == 1   # not due: nothing started
    kit.run()
    kit.log.append(new_event("alert.raised", None, alert_id=f"{DISK_ALERT}:/", name=DISK_ALERT,
                             severity="error", message="disk 95 % full", fields={}))
    assert woken and collection.sleep_hint() == 0.0
    steps = 0
    while collection.ended == 1:
        collection.step()
        steps += 1
    assert runs[2] not in kit.data_dirs() and runs[3] in kit.data_dirs()
    done = [kw for event, kw in out.lines if event == "gc_done"]
    assert len(done) == 2 and done[1]["removed"] == 1 and done[1]["steps"] == steps
    assert ("resolve", "retention.data_budget_exceeded:data", "data/ is within "
            "retain.data_budget") in out.alerts


def test_a_due_collection_waits_while_runs_are_in_flight_but_not_for_ever(kit: Kit) -> None:
    """Issue 18: the loop's collection gives the CPU to a burst's runs; a daemon never idle
    still collects after BUSY_WAIT_MAX_S, and the disk alert's collection never waits."""
    from ahgd_daemon.collection import (BUSY_RECHECK_S, BUSY_WAIT_MAX_S, DISK_ALERT,
                                        DaemonCollection)
    from state import new_event

    kit.succeed(True)
    kit.run()
    now, busy, out = [1000.0], [True], _Lines()
    collection = DaemonCollection(kit.log, kit.state_dir, kit.policy, logger=out,
                                  wake=lambda: None, alerts=out, clock=kit.collector().clock,
                                  monotonic=lambda: now[0], busy=lambda: busy[0])
    kit.log.add_listener(collection.on_event)
    now[0] += 10   # due, but runs are in flight: nothing starts, the loop sleeps meanwhile
    for _ in range(3):
        collection.step()
        now[0] += BUSY_RECHECK_S
    assert collection.ended == 0 and not out.lines
    assert collection.sleep_hint() == BUSY_RECHECK_S
    now[0] += BUSY_WAIT_MAX_S  # it waits at most BUSY_WAIT_MAX_S, then steps on, busy or not
    for _ in range(1000):
        collection.step()
        if collection.ended:
            break
    assert collection.ended == 1 and [e for e, _ in out.lines] == ["gc_done"]
    kit.log.append(new_event("alert.raised", None, alert_id=f"{DISK_ALERT}:/", name=DISK_ALERT,
                             severity="error", message="disk 95 % full", fields={}))
    assert collection.sleep_hint() == 0.0  # the disk alert's collection: busy or not, now
    for _ in range(1000):
        collection.step()
        if collection.ended == 2:
            break
    assert collection.ended == 2
    now[0] += 1000  # the next interval's collection, on a quiet turn: at once
    busy[0] = False
    for _ in range(1000):
        collection.step()
        if collection.ended == 3:
            break
    assert collection.ended == 3 and [e for e, _ in out.lines] == ["gc_done"] * 3


def test_the_cache_of_object_store_copies_loses_what_nothing_read_for_a_day(kit: Kit) -> None:
    """cache/objects (a Dask executor's fetched outputs and inputs) only grew: an entry no
    one has read for a day goes now, and a read (a fetch that finds it cached) keeps it."""
    from state.objectstore import CACHE_DIR, ObjectStore

    cache = kit.state_dir / CACHE_DIR
    (cache / "inputs" / "abc").mkdir(parents=True)
    two_days_ago = (time.time() - 2 * 86400,) * 2
    old, read, new = cache / "aaa.duckdb", cache / "bbb.duckdb", cache / "ccc.duckdb"
    old_input = cache / "inputs" / "abc" / "seifa.csv"
    part = cache / "ddd.duckdb.123.456.part"      # a download a crash cut short
    for path in (old, read, new, old_input, part):
        path.write_bytes(b"x" * 10)
    for path in (old, read, old_input, part):
        os.utime(path, two_days_ago)
    # a stage reads bbb: the store finds it cached (no request is made) and touches it
    store = ObjectStore({"url": "s3://ahgd-outputs/prod"})
    mtime = read.stat().st_mtime_ns
    assert store.fetch({"uri": "s3://ahgd-outputs/prod/data/r/x-a1.duckdb", "sha256": "bbb",
                        "bytes": 10}, cache) == read
    assert read.stat().st_mtime_ns == mtime   # an input's mtime is part of its identity
    assert _collect(kit, 0) == sorted([
        ("file.expired", None, "cache", "cache/objects/aaa.duckdb"),
        ("file.expired", None, "cache", "cache/objects/ddd.duckdb.123.456.part"),
        ("file.expired", None, "cache", "cache/objects/inputs/abc")], key=str)
    assert read.exists() and new.exists() and not old_input.parent.exists()
    # a day and a half on, by the collector's clock, the other two have gone unread too
    assert _collect(kit, 1.5) == sorted([
        ("file.expired", None, "cache", "cache/objects/bbb.duckdb"),
        ("file.expired", None, "cache", "cache/objects/ccc.duckdb")], key=str)


def test_a_removed_run_log_stays_removed_when_the_removal_is_logged(kit: Kit, tmp_path) -> None:
    """The daemon logs each event, and copies a line naming a run into that run's log: the
    removal of a run's log, logged so, made the log again (one line: its own removal), and
    every later collection removed it again, one event more each time, for ever."""
    import io

    import structlog

    from ahgd_daemon.logs import EventLogger
    from pipelines.execution import logsetup
    from state import runlogs

    kit.succeed(True)
    r1 = kit.run()
    kit.succeed(False)
    failed = kit.run()
    _logs(kit, r1, failed)
    logsetup.configure_logging(json_lines=True, stream=io.StringIO())
    logsetup.keep_run_logs(kit.state_dir)   # as in the daemon
    kit.log.add_listener(EventLogger(kit.log))
    try:
        first = _collect(kit, 11)          # past logs_for (P10D), and failed_runs_for
        second = _collect(kit, 11.5)
    finally:
        logsetup.keep_run_logs(None)
        runlogs.close_all()
        structlog.reset_defaults()
    assert ("file.expired", r1, "logs", f"logs/{r1}.jsonl") in first
    assert ("data.expired", failed, "data", f"data/{failed}") in first
    assert not (kit.state_dir / "logs" / f"{r1}.jsonl").exists()
    assert not (kit.state_dir / "logs" / f"{failed}.jsonl").exists()
    assert second == []
