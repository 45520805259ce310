"""The parts of day-to-day operations (issue 17) in process, on real SQLite and DuckDB files:
pauses as events, skipped ticks and resume by the misfire policy, backfill plans, run
parameters, quarantine release and purge, exports, run logs, the dry run, the HTTP log."""

from __future__ import annotations

import json
import os
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from ahgd_daemon import backfill, pausing, quarantine, schedules as sched
from ahgd_daemon.requests import RequestError
from pipelines.errors import ConfigError
from state import (EventLog, EventType as T, IllegalTransition, new_event, ops_queries, queries,
                   removals)

UTC = timezone.utc
BY = {"user": "alice", "uid": 1000, "pid": 1, "host": "h"}


def _schedule(pipeline: str = "p", **spec):
    base = {"timezone": "UTC", "cron": None, "interval": None, "misfire": "latest",
            "params": {}, "id": None}
    base.update(spec)
    return sched.build(pipeline, SimpleNamespace(**base))


# --------------------------------------------------------------------------- pauses


def test_a_pause_is_an_event_that_a_new_log_reads_back(state_dir):
    with EventLog.open(state_dir) as log:
        out = pausing.pause(log, "p", ["p", "q"], "  feed late  ", BY)
        assert out["pause"]["reason"] == "feed late"
        with pytest.raises(RequestError, match="already paused by alice"):
            pausing.pause(log, "p", ["p"], None, BY)
        with pytest.raises(RequestError, match="did you mean 'p'"):
            pausing.pause(log, "pp", ["p", "q"], None, BY)
        with pytest.raises(RequestError, match="is not paused"):
            pausing.resume(log, "q", ["p", "q"], BY)
    with EventLog.open(state_dir) as log:  # a restart: the log is the record
        paused = ops_queries.pipeline_pauses(log)
        assert list(paused) == ["p"] and paused["p"]["by"]["user"] == "alice"
        assert "paused by alice (uid 1000) at" in pausing.describe(paused["p"])
        pausing.resume(log, "p", ["p"], BY)
        assert ops_queries.pipeline_pauses(log) == {}
        pausing.pause(log, "p", ["p"], "again", BY)  # paused, resumed, paused again
        assert ops_queries.pipeline_pauses(log)["p"]["reason"] == "again"
        log.rebuild()  # a replay of every event folds the pauses the same way
        assert ops_queries.pipeline_pauses(log)["p"]["reason"] == "again"


def test_a_skipped_tick_is_legal_only_while_its_pipeline_is_paused(state_dir):
    with EventLog.open(state_dir) as log:
        with pytest.raises(IllegalTransition):
            log.append(new_event(T.SCHEDULE_SKIPPED, "sched-p-x", pipeline="p", trigger="t",
                                 fire_time="2026-01-01T00:00:00.000000Z"))
        assert log.query("SELECT COUNT(*) FROM events")[0][0] == 0


def test_ticks_of_a_paused_pipeline_are_skipped_and_resume_fires_by_the_policy(state_dir):
    latest = _schedule("p", interval=timedelta(minutes=1), misfire="latest", id="every")
    every = _schedule("p", interval=timedelta(minutes=1), misfire="all", id="all")
    none = _schedule("p", interval=timedelta(minutes=1), misfire="skip", id="skip")
    other = _schedule("q", interval=timedelta(minutes=1), misfire="latest")
    schedules = [latest, every, none, other]
    t0 = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    with EventLog.open(state_dir) as log:
        for s in schedules:
            sched.catch_up(log, s, t0 - timedelta(seconds=1))
        pause = pausing.pause(log, "p", ["p", "q"], None, BY)
        for minute in range(3):
            sched.due(log, schedules, t0 + timedelta(minutes=minute, seconds=1))
        assert queries.pending_runs(log, ["p"], 100) == []  # nothing of p was requested
        assert len(queries.pending_runs(log, ["q"], 100)) == 3  # q was not paused
        assert len(ops_queries.skipped_ticks(log, "p", 0)) == 9
        was = pausing.resume(log, "p", ["p"], BY)["was"]
        fired = pausing.fire_skipped_ticks(log, schedules, "p", was["seq"])
    assert sorted(fired) == sorted([sched.run_id_for(latest, t0 + timedelta(minutes=2))]
                                   + [sched.run_id_for(every, t0 + timedelta(minutes=m))
                                      for m in range(3)])
    assert pause["pipeline"] == "p"


def test_backfill_runs_take_at_most_their_slots(state_dir):
    with EventLog.open(state_dir) as log:
        for i in range(4):
            log.append(new_event(T.RUN_REQUESTED, f"bf-{i}", pipeline="p", trigger="backfill",
                                 params={"backfill": "b"}))
        log.append(new_event(T.RUN_REQUESTED, "manual-1", pipeline="p", trigger="manual",
                             params={}))
        picked = [r for r, _ in queries.pending_runs(log, ["p"], 10, backfill_slots=2)]
    assert picked == ["bf-0", "bf-1", "manual-1"]  # the later manual run is not held back


# --------------------------------------------------------------------------- backfills


def test_a_backfill_plan_is_one_run_per_past_tick_with_a_stable_id(state_dir):
    s = _schedule("p", cron="30 2 * * *", timezone="Australia/Sydney", id="nightly")
    now = datetime(2026, 4, 10, tzinfo=UTC)
    with EventLog.open(state_dir) as log:
        # 5 April 2026: daylight saving ends in Sydney; 02:30 comes twice, and runs once
        plan = backfill.plan(log, s, "2026-04-04", "2026-04-06", now)
        assert len(plan.ticks) == 3
        assert len(set(plan.ticks)) == 3
        requested = backfill.request(log, s, plan)
        assert len(requested) == 3
        again = backfill.plan(log, s, "2026-04-04", "2026-04-06", now)
        assert again.backfill_id == plan.backfill_id and set(again.existing) == set(requested)
        assert backfill.request(log, s, again) == []
        runs = ops_queries.backfill_runs(log, plan.backfill_id)
        assert [r["fire_time"] for r in runs] == sorted(r["fire_time"] for r in runs)
        # partly in the future: those ticks are the schedule's, not the backfill's
        future = backfill.plan(log, s, "2026-04-08", "2026-04-20", now)
        assert len(future.ticks) == 3 and future.later == 10  # now: 10:00 on 10 April there
        with pytest.raises(RequestError, match="is after --to"):
            backfill.plan(log, s, "2026-04-06", "2026-04-04", now)
        with pytest.raises(RequestError, match="not a date or a time"):
            backfill.plan(log, s, "last week", "2026-04-04", now)
        with pytest.raises(RequestError, match="no backfill 'backfill-x'"):
            backfill.cancel_group(log, state_dir, "backfill-x")
        out = backfill.cancel_group(log, state_dir, plan.backfill_id)
        assert sorted(out["cancelled"]) == sorted(requested)


def test_a_backfill_refuses_too_many_ticks(state_dir):
    s = _schedule("p", interval=timedelta(seconds=1))
    with EventLog.open(state_dir) as log, pytest.raises(RequestError, match="more than 10,000"):
        backfill.plan(log, s, "2026-01-01", "2026-01-02", datetime(2026, 2, 1, tzinfo=UTC))


# --------------------------------------------------------------------------- params


def _pipeline_file(tmp_path: Path, params: str, trigger: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("pipeline: {name: p}\nparams:\n" + textwrap.indent(textwrap.dedent(params), "  ")
                    + f"\ntriggers: [{trigger}]\nstages:\n"
                    "  - {name: s, type: extractor, class: tests.daemon.stages.Tick}\n")
    return path


def test_params_are_converted_checked_and_defaulted(tmp_path):
    from pipelines.config import load_pipeline_file
    from pipelines.config.params import ParamError, parse_assignments, resolve

    spec = load_pipeline_file(_pipeline_file(tmp_path, """\
        region: {type: string, choices: [NSW, VIC], required: true}
        year: {type: integer, default: 2021, min: 2000}
        share: {type: number}
        full: {type: boolean, default: false}
        as_of: {type: date}
        """)).params
    got = resolve("p", spec, parse_assignments(["region=VIC", "share=0.5", "full=yes",
                                                "as_of=2026-12-01"]))
    assert got == {"region": "VIC", "share": 0.5, "full": True, "as_of": "2026-12-01",
                   "year": 2021}
    with pytest.raises(ParamError) as err:
        resolve("p", spec, {"year": "20x", "regon": "VIC", "as_of": "1 Dec"})
    message = str(err.value)
    assert "did you mean 'region'" in message and "is not a whole number" in message
    assert "is not a date" in message and "param 'region' is required" in message
    with pytest.raises(ParamError, match="declares no params"):
        resolve("p", {}, {"x": "1"})
    with pytest.raises(ValueError, match="given twice"):
        parse_assignments(["a=1", "a=2"])


@pytest.mark.parametrize("params, trigger, message", [
    ("fire_time: {type: string}", "", "is set by ahgd itself"),
    ("region: {type: string, required: true}",
     '{type: drop_folder, path: "/tmp/x", pattern: "*.csv"}', "are required, but a drop_folder"),
    ("year: {type: integer, default: 1999, min: 2000}", "", "below its min"),
    ("region: {type: string, choices: [NSW]}",
     "{type: schedule, cron: '0 2 * * *', params: {region: VIC}}", "the schedule"),
])
def test_a_params_section_that_cannot_work_is_a_config_error(tmp_path, params, trigger, message):
    from pipelines.config import load_pipeline_file

    with pytest.raises(ConfigError, match=message):
        load_pipeline_file(_pipeline_file(tmp_path, params, trigger))


# --------------------------------------------------------------------------- quarantine


def _quarantined(state_dir: Path, name: str, data: bytes, when: str) -> Path:
    folder = state_dir / "quarantine" / "p"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    import hashlib

    (folder / (name + ".reason.json")).write_text(json.dumps({
        "file": name, "pipeline": "p", "reason": "bad header", "quarantined_at": when,
        "run_id": None, "sha256": hashlib.sha256(data).hexdigest()}))
    return path


def test_release_puts_the_file_back_once_recorded_and_refuses_to_overwrite(state_dir, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    _quarantined(state_dir, "a.csv", b"x\n1\n", "2026-01-01T00:00:00.000000Z")
    (drop / "a.csv").write_text("another a.csv waits here")
    with EventLog.open(state_dir) as log:
        [item] = quarantine.resolve(state_dir, ["a.csv"])
        with pytest.raises(RequestError, match="exists already"):
            quarantine.release(log, item, drop)
        assert log.query("SELECT COUNT(*) FROM events")[0][0] == 0  # nothing recorded
        (drop / "a.csv").unlink()
        [by_hash] = quarantine.resolve(state_dir, [item.sha256[:10]])
        out = quarantine.release(log, by_hash, drop)
        assert out["to"] == str(drop / "a.csv") and (drop / "a.csv").read_bytes() == b"x\n1\n"
        assert quarantine.listing(state_dir) == []
        assert ops_queries.file_bytes(log, "p", item.sha256)["state"] == "RELEASED"
        with pytest.raises(RequestError, match="no drop folder"):
            quarantine.release(log, item, None)


def test_purge_records_each_removal_before_it_removes(state_dir):
    _quarantined(state_dir, "old.csv", b"old", "2026-01-01T00:00:00.000000Z")
    _quarantined(state_dir, "new.csv", b"new!", "2026-03-01T00:00:00.000000Z")
    now = datetime(2026, 3, 2, tzinfo=UTC)
    with EventLog.open(state_dir) as log:
        dry = quarantine.purge(log, state_dir, timedelta(days=30), now, dry_run=True)
        assert [Path(q["path"]).name for q in dry["removed"]] == ["old.csv"]
        assert len(quarantine.listing(state_dir)) == 2
        out = quarantine.purge(log, state_dir, quarantine.parse_age("30d"), now)
        assert out["bytes"] == 3 and out["kept"] == 1
        [(payload,)] = log.query("SELECT payload FROM events WHERE type = 'file.expired'")
    expired = json.loads(payload)
    assert expired["area"] == "quarantine" and expired["bytes"] == 3
    # retention's payload: the path relative to the state directory, as the removals view and
    # removal_of() look for it
    assert expired["path"] == "quarantine/" + Path(dry["removed"][0]["path"]).relative_to(
        state_dir / "quarantine").as_posix()
    with EventLog.open(state_dir) as log:
        assert removals.removal_of(log, expired["path"])["area"] == "quarantine"
    assert [q.file for q in quarantine.listing(state_dir)] == ["new.csv"]
    with pytest.raises(RequestError, match="'a month' is not a duration; .* or a number with a unit such as 30m"):
        quarantine.parse_age("a month")


# --------------------------------------------------------------------------- exports


def test_export_streams_a_table_and_leaves_nothing_half_written(tmp_path):
    from ahgd_daemon.exports import ExportError, export

    db = tmp_path / "w.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA s")
    con.execute("CREATE TABLE s.big AS SELECT range AS i, 'row ' || range AS t FROM range(300000)")
    con.close()
    out = export(db, "s.big", "parquet", tmp_path / "big.parquet", what="w")
    assert out["rows"] == 300000
    assert duckdb.sql(f"SELECT SUM(i) FROM '{tmp_path / 'big.parquet'}'").fetchall() == [
        (sum(range(300000)),)]
    out = export(db, "S.BIG", "csv", tmp_path / "big.csv", what="w")
    assert (tmp_path / "big.csv").read_text().startswith("i,t\n0,row 0\n")
    with pytest.raises(ExportError, match="did you mean 's.big'"):
        export(db, "s.bgi", "csv", tmp_path / "x.csv", what="w")
    with pytest.raises(ExportError, match="does not exist; create it"):
        export(db, "s.big", "csv", tmp_path / "nowhere" / "x.csv", what="w")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv", "big.parquet", "w.duckdb"]


def test_an_export_streams_a_table_larger_than_its_memory(tmp_path):
    """156 MB of values exported with DuckDB held to 100 MB: only a streamed copy fits."""
    from ahgd_daemon.exports import export

    db = tmp_path / "w.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE big AS SELECT range AS i, repeat(md5(range::VARCHAR), 3) AS t "
                    "FROM range(1500000)")
        values = con.execute("SELECT SUM(length(t)) + 8 * COUNT(*) FROM big").fetchone()[0]
    assert values > 1.5 * 100e6
    for fmt in ("parquet", "csv"):
        out = export(db, "big", fmt, tmp_path / f"big.{fmt}", what="w", memory_limit="100MB")
        assert out["rows"] == 1500000
        assert duckdb.sql(f"SELECT COUNT(*), SUM(i) FROM '{tmp_path / f'big.{fmt}'}'"
                          ).fetchall() == [(1500000, sum(range(1500000)))]


# --------------------------------------------------------------------------- run logs


def test_a_run_log_merges_its_lines_with_the_events_no_line_carries(state_dir):
    from ahgd_daemon.runlog import RunLogReader, render
    from state import runlogs

    with EventLog.open(state_dir) as log:
        e1 = log.append(new_event(T.RUN_REQUESTED, "r1", pipeline="p", trigger="manual",
                                  params={}))
        log.append(new_event(T.RUN_STARTED, "r1", stages=["s"]))
        runlogs.append(state_dir, "r1", {"timestamp": e1.ts, "event": "run.requested",
                                         "seq": e1.seq, "run_id": "r1"})
        runlogs.append(state_dir, "r1", {"timestamp": e1.ts, "event": "output", "stage": "s",
                                         "stream": "stdout", "line": "hello", "run_id": "r1"})
        with open(runlogs.run_log_path(state_dir, "r1"), "ab") as f:
            f.write(b'{"half a line')  # a line still being written: left for the next look
        reader = RunLogReader(state_dir, "r1")
        lines = reader.poll(log, final=True)
        assert [x["event"] for x in lines] == ["run.requested", "output", "run.started"]
        assert lines[2]["from_history"] is True  # made up from the event log
        assert "| hello" in render(lines[1])
        assert reader.poll(log, final=True) == []
        only = RunLogReader(state_dir, "r1", "s").poll(log)
        assert [x["event"] for x in only] == ["output"]


def test_the_http_log_of_a_run(state_dir):
    from ahgd_daemon.httpstatus import StatusSources, _route

    with EventLog.open(state_dir) as log:
        log.append(new_event(T.RUN_REQUESTED, "r1", pipeline="p", trigger="manual", params={}))
    sources = StatusSources(*([None] * (len(StatusSources._fields) - 1)),
                            history_db=lambda: str(state_dir / "history.db"))
    reply = _route(sources, "/api/runs/r1/log", {})
    assert reply.status == 200 and b"run.requested trigger=manual" in reply.body
    reply = _route(sources, "/api/runs/r1/log", {"format": ["json"]})
    assert json.loads(reply.body.splitlines()[0])["event"] == "run.requested"
    assert _route(sources, "/api/runs/nope/log", {}).status == 404


# --------------------------------------------------------------------------- the dry run


def test_the_dry_run_names_duplicates_and_waiting_runs(tmp_path, state_dir):
    from ahgd_daemon.configuration import load_setup
    from ahgd_daemon.dropfolder import Claimer
    from ahgd_daemon.dryrun import plan
    from tests.daemon.harness import drop_csv, write_config

    # stable_for 60 s: fresh.csv is "being written" however slowly the host gets to the plan
    master = write_config(tmp_path, stable_for="PT60S")
    setup = load_setup([master], state_dir)
    [folder] = setup.folders
    with EventLog.open(state_dir) as log:
        claimed = Claimer(log, state_dir).claim(folder, drop_csv(folder.path, "a.csv"))
        assert claimed.run_id
        pausing.pause(log, "csvpipe", ["csvpipe"], "maintenance", BY)
        drop_csv(folder.path, "again.csv")             # the same bytes as a.csv
        drop_csv(folder.path, "new.csv", seed=1)
        os.utime(folder.path / "new.csv", (time.time() - 120, time.time() - 120))
        os.utime(folder.path / "again.csv", (time.time() - 120, time.time() - 120))
        drop_csv(folder.path, "fresh.csv", seed=2)     # still being written, as it seems
        (folder.path / "empty.csv").write_bytes(b"")
        os.utime(folder.path / "empty.csv", (time.time() - 120, time.time() - 120))
        seq = log.query("SELECT MAX(seq) FROM events")[0][0]
        doc = plan(setup, log, datetime.now(UTC))
        assert log.query("SELECT MAX(seq) FROM events")[0][0] == seq  # it recorded nothing
    [p] = doc["pipelines"]
    assert p["state"] == "paused" and p["pause"]["reason"] == "maintenance"
    assert p["waiting_runs"] == [claimed.run_id]
    would = {f["file"]: (f["would"], f["why"]) for f in p["files"]}
    assert would["again.csv"][0] == "move it to duplicates" and "a.csv" in would["again.csv"][1]
    assert would["new.csv"] == ("take it", "a new file; its run waits: the pipeline is paused")
    assert would["fresh.csv"][0] == "wait, then take it"
    assert would["empty.csv"][0] == "quarantine it"


# --------------------------------------------------------------------------- without a daemon


def test_without_a_daemon_the_commands_work_from_the_history_and_the_config(tmp_path, ahgd,
                                                                           clean_env):
    import subprocess

    from tests.daemon.harness import write_config

    master = write_config(tmp_path, extra_triggers="  - {type: schedule, cron: '0 3 * * *'}")
    state = tmp_path / "state"

    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        p = subprocess.run([*ahgd, *args, "--state-dir", str(state)], capture_output=True,
                           text=True, timeout=60, env=clean_env)
        assert p.returncode == code, (args, p.stdout, p.stderr)
        return p

    assert "--config is needed" in cli("pipelines", code=1).stderr
    plan = json.loads(cli("backfill", "csvpipe", "--from", "2026-11-01", "--to", "2026-11-02",
                          "--dry-run", "--json", "--config", str(master)).stdout)
    assert plan["ticks"] == 2 and plan["requested"] is None
    assert not state.exists()  # a dry run writes nothing, not even a history
    cli("pause", "csvpipe", "--config", str(master))
    [listed] = json.loads(cli("pipelines", "--json", "--config", str(master)).stdout)
    assert listed["state"] == "paused" and listed["next_tick"].endswith("T03:00:00.000000Z")
    out = cli("backfill", "csvpipe", "--from", "2026-11-01", "--to", "2026-11-02", "--config",
              str(master)).stdout
    assert "requested 2 run(s)" in out and "the runs wait for `ahgd resume csvpipe`" in out
    assert "no daemon runs" in cli("resume", "csvpipe").stdout  # names from the history
    assert "did you mean 'csvpipe'" in cli("resume", "csvpip", code=1).stderr
    run_id = json.loads(cli("history", "--json", "--trigger", "backfill").stdout)[0]["run_id"]
    shown = cli("logs", run_id)
    assert "run.requested trigger=backfill" in shown.stdout and "no log file" in shown.stderr


def test_following_a_run_log_shows_old_events_in_their_place_at_once(state_dir):
    """``ahgd logs -f``: events recorded a while ago by a process that keeps no run log are
    shown in the first look, in time order among the file's lines, not after the newer
    lines once their grace has passed."""
    from ahgd_daemon.runlog import RunLogReader
    from state import runlogs

    from datetime import datetime, timezone

    long_ago = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with EventLog.open(state_dir, clock=lambda: long_ago) as log:   # recorded long ago
        log.append(new_event(T.RUN_REQUESTED, "r1", pipeline="p", trigger="manual", params={}))
    runlogs.append(state_dir, "r1", {"timestamp": "2026-01-01T00:00:01.000000Z",
                                     "event": "stage said hello", "run_id": "r1"})
    with EventLog.open(state_dir) as log:
        lines = RunLogReader(state_dir, "r1").poll(log, final=False)
        assert [x["event"] for x in lines] == ["run.requested", "stage said hello"]
