"""Operating ahgd day to day, end to end against the real daemon (issue 17): a dry run, pause
and resume (across a restart), `ahgd pipelines`, `ahgd status`, params, `ahgd logs` (also
--follow), `ahgd runs show`, history filters, exports, quarantine list/release/purge, and
backfills (a second one a no-op, cancelled as a group).

One scenario, one daemon restart: each command is run as a user runs it, a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb

from .harness import REPO, Daemon, ahgd_exe, drop_csv, env, query, wait_until

OPS = """\
    pipeline: {name: ops}
    params:
      region: {type: string, choices: [NSW, VIC], default: NSW}
      year: {type: integer, min: 2000, max: 2030, default: 2021}
      explode: {type: boolean, default: false}
      sleep: {type: number, default: 0}
    triggers:
      - {type: drop_folder, path: "${state_dir}/inbox/ops", pattern: "*.csv", stable_for: PT0.2S,
         input_check: {required_columns: [a]}}
      - {type: schedule, cron: "0 2 * * *", timezone: Australia/Sydney, misfire: skip}
    stages:
      - {name: extract, type: extractor, class: tests.daemon.ops_stages.Extract, retry_attempts: 0}
      - {name: load, type: loader, class: tests.daemon.ops_stages.Load, retry_attempts: 0}
    """
TICKER = """\
    pipeline: {name: ticker}
    triggers:
      - {type: schedule, interval: PT1S, misfire: latest}
    stages:
      - {name: tick, type: extractor, class: tests.daemon.stages.Tick, retry_attempts: 0}
    """


def _config(tmp: Path) -> Path:
    (tmp / "ops.yaml").write_text(textwrap.dedent(OPS))
    (tmp / "ticker.yaml").write_text(textwrap.dedent(TICKER))
    master = tmp / "master.yaml"
    master.write_text("pipelines:\n  - {name: ops, config_file: ops.yaml}\n"
                      "  - {name: ticker, config_file: ticker.yaml}\n"
                      "daemon: {max_workers: 2, shutdown_grace: PT5S}\n")
    return master


class Cli:
    def __init__(self, state: Path):
        self.state = state

    def __call__(self, *args: str, code: int | None = 0) -> subprocess.CompletedProcess:
        p = subprocess.run([*ahgd_exe(), *args, "--state-dir", str(self.state)],
                           capture_output=True, text=True, env=env(), cwd=REPO, timeout=120)
        if code is not None:
            assert p.returncode == code, (args, p.returncode, p.stdout, p.stderr)
        return p

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)


def _count(state: Path, sql: str, params: tuple = ()) -> int:
    rows = query(state, sql, params)
    return rows[0][0] if rows else 0


def _run_ids(state: Path, where: str, params: tuple = ()) -> list[str]:
    return [r[0] for r in query(state, f"SELECT run_id FROM runs WHERE {where} "
                                       "ORDER BY requested_at", params)]


def test_day_to_day_operations_end_to_end(tmp_path):
    state = tmp_path / "state"
    inbox = state / "inbox" / "ops"
    master = _config(tmp_path)
    ahgd = Cli(state)

    # -- a dry run: what it would do, and nothing written -------------------------------------
    drop_csv(inbox, "good.csv")
    (inbox / "bad.csv").write_text("x,y\n1,2\n")        # lacks the required column a
    (inbox / "notes.txt").write_text("not a csv")
    (inbox / ".hidden.csv").write_text("a\n1\n")
    (inbox / "link.csv").symlink_to(inbox / "good.csv")
    time.sleep(0.3)
    before = sorted(str(p) for p in state.rglob("*"))
    plan = ahgd.json("daemon", "--config", str(master), "--dry-run")
    assert sorted(str(p) for p in state.rglob("*")) == before  # it changed nothing
    ops = {p["name"]: p for p in plan["pipelines"]}["ops"]
    would = {f["file"]: f["would"] for f in ops["files"]}
    assert would["good.csv"] == "take it" and would["bad.csv"] == "take it"
    assert would["notes.txt"] == "leave it" and would[".hidden.csv"] == "leave it"
    assert would["link.csv"].startswith("refuse it")
    # 02:00 in Sydney, in UTC: 15:00Z in daylight saving (AEDT), 16:00Z out of it (AEST)
    tick = datetime.fromisoformat(ops["next_tick"])
    assert ops["next_tick"].endswith("Z") and tick.utcoffset() == timedelta(0), ops["next_tick"]
    assert tick.astimezone(ZoneInfo("Australia/Sydney")).strftime("%H:%M:%S.%f") == \
        "02:00:00.000000", ops["next_tick"]
    assert timedelta(0) < tick - datetime.now(timezone.utc) <= timedelta(hours=25), ops["next_tick"]
    text = ahgd("daemon", "--config", str(master), "--dry-run").stdout
    assert "notes.txt: would leave it (does not match the pattern '*.csv')" in text
    (inbox / "link.csv").unlink()

    # -- paused before the daemon starts (no daemon: recorded here, names from --config) ------
    out = ahgd("pause", "ticker", "--reason", "upstream feed late", "--config", str(master))
    assert "paused by" in out.stdout and "upstream feed late" in out.stdout
    wrong = ahgd("pause", "tickr", "--config", str(master), code=1)
    assert "did you mean 'ticker'" in wrong.stderr

    d = Daemon(master, state).wait_ready()
    try:
        wait_until(lambda: _count(state, "SELECT COUNT(*) FROM runs WHERE pipeline = 'ops' AND "
                                         "state = 'COMPLETED'") == 1, 30, "good.csv to run")
        wait_until(lambda: _count(state, "SELECT COUNT(*) FROM events WHERE type = "
                                         "'schedule.skipped'") >= 2, 15, "ticks recorded skipped")
        assert _count(state, "SELECT COUNT(*) FROM runs WHERE pipeline = 'ticker'") == 0
        listed = {p["name"]: p for p in ahgd.json("pipelines")}
        assert listed["ticker"]["state"] == "paused" and listed["ops"]["state"] == "active"
        assert listed["ticker"]["pause"]["reason"] == "upstream feed late"
        assert listed["ops"]["last_run"]["state"] == "COMPLETED"
        assert listed["ticker"]["next_tick"] is not None

        # -- pause ops through the daemon: a file arrives, is recorded, and its run waits ------
        ahgd("pause", "ops", "--reason", "warehouse maintenance")
        drop_csv(inbox, "later.csv", seed=7)
        wait_until(lambda: _run_ids(state, "pipeline = 'ops' AND state = 'PENDING'"), 15,
                   "later.csv to be taken")
        waiting = _run_ids(state, "pipeline = 'ops' AND state = 'PENDING'")[0]
        assert not (inbox / "later.csv").exists()            # taken and recorded, not lost
        status = " ".join(ahgd("status").stdout.split())  # as rich wrapped it, unwrapped
        assert "Paused pipelines (2)" in status
        assert "ops: paused by" in status and "warehouse maintenance" in status
        assert ahgd.json("status")["paused"]["ops"]["by"]["uid"] >= 0
    finally:
        assert d.stop() == 0

    # -- the pause survives a restart; resume fires the latest skipped tick ----------------------
    d = Daemon(master, state).wait_ready()
    try:
        time.sleep(1.5)
        assert _run_ids(state, "pipeline = 'ops' AND state = 'PENDING'") == [waiting]
        ahgd("resume", "ops")
        wait_until(lambda: query(state, "SELECT state FROM runs WHERE run_id = ?", (waiting,))
                   == [("COMPLETED",)], 30, "the waiting run to complete")
        resumed = ahgd("resume", "ticker").stdout
        assert "1 skipped tick(s) fired" in resumed
        again = ahgd("resume", "ticker", code=1)
        assert "is not paused" in again.stderr

        # -- the run's log: stage log lines, printed output, events --------------------------
        log_text = ahgd("logs", waiting).stdout
        assert "extract_params region=NSW year=2021" in log_text     # context.log, defaults
        assert "| printed by extract: region=NSW" in log_text        # stdout of the stage
        assert "! warned on stderr by extract" in log_text           # its stderr
        assert "run.completed" in log_text
        assert (state / "logs" / f"{waiting}.jsonl").exists()
        lines = [json.loads(x) for x in ahgd("logs", waiting, "--stage", "load", "--json")
                 .stdout.splitlines()]
        assert lines and all(x["stage"] == "load" for x in lines)
        bad_stage = ahgd("logs", waiting, "--stage", "lod", code=1)
        assert "did you mean 'load'" in bad_stage.stderr
        bad_run = ahgd("logs", waiting[:-1] + "x", code=1)
        assert "did you mean" in bad_run.stderr

        # -- params: checked, and they reach the stages as context.params ---------------------
        refused = ahgd("run", "ops", "--param", "regoin=VIC", code=1)
        assert "unknown param 'regoin'; did you mean 'region'?" in refused.stderr
        assert "not one of NSW, VIC" in ahgd("run", "ops", "--param", "region=QLD",
                                             code=1).stderr
        assert "below its min 2000" in ahgd("run", "ops", "-p", "year=1999", code=1).stderr
        assert "not key=value" in ahgd("run", "ops", "--param", "region", code=2).stderr
        ahgd("run", "ops", "--param", "region=VIC", "--param", "year=2024")
        vic = _run_ids(state, "trigger = 'manual' AND state = 'COMPLETED'")[-1]
        assert "extract_params region=VIC year=2024" in ahgd("logs", vic).stdout
        shown = ahgd.json("runs", "show", vic)
        assert shown["params"] == {"region": "VIC", "year": 2024, "explode": False, "sleep": 0.0}

        # -- a failed run: its traceback in its log and in `runs show`; history filters --------
        ahgd("run", "ops", "--param", "explode=true", code=1)
        failed = _run_ids(state, "state = 'FAILED'")[-1]
        assert "Traceback (most recent call last)" in ahgd("logs", failed).stdout
        show = ahgd("runs", "show", failed).stdout
        assert "state      FAILED at stage extract" in show
        assert "RuntimeError: exploded on request (param explode)" in show
        assert f"ahgd logs {failed}" in show
        rows = ahgd.json("history", "--state", "failed", "--pipeline", "ops")
        assert [r["run_id"] for r in rows] == [failed]
        manual = ahgd.json("history", "--trigger", "manual", "--since", "2000-01-01")
        assert {r["run_id"] for r in manual} == {vic, failed}
        assert ahgd.json("history", "--since", "2999-01-01") == []
        assert "did you mean 'FAILED'" in ahgd("history", "--state", "FIALED", code=1).stderr
        assert "did you mean 'drop_folder'" in ahgd("history", "--trigger", "drop-folder",
                                                    code=1).stderr
        assert "did you mean 'drop_folder'" in ahgd("history", "--trigger", "drop",
                                                    code=1).stderr
        assert "not a date or a time" in ahgd("history", "--since", "yesterday", code=1).stderr

        # -- exports: a warehouse table, a stage's output --------------------------------------
        out_csv = tmp_path / "loaded.csv"
        ahgd("export", "loaded", "--format", "csv", "--to", str(out_csv))
        assert out_csv.read_text().splitlines()[0] == "i,region,year"
        assert "did you mean 'loaded'" in ahgd("export", "laoded", "--to", str(out_csv),
                                               code=1).stderr
        out_pq = tmp_path / "extract.parquet"
        ahgd("export", "output", "--run", vic, "--stage", "extract", "--to", str(out_pq))
        assert duckdb.sql(f"SELECT COUNT(*), MIN(region) FROM '{out_pq}'").fetchall() == [(5, "VIC")]
        assert "did you mean 'extract'" in ahgd("export", "output", "--run", vic, "--stage",
                                                "extrct", "--to", str(out_pq), code=1).stderr

        # -- quarantine: list, release (taken again, not a duplicate), purge ---------------------
        listed_q = ahgd.json("quarantine", "list", "--pipeline", "ops")
        assert [q["file"] for q in listed_q] == ["bad.csv"]
        assert "missing required column" in listed_q[0]["reason"]
        assert "did you mean 'ops'" in ahgd("quarantine", "list", "--pipeline", "opss",
                                            code=1).stderr
        assert "no file 'bda.csv' in quarantine; did you mean 'bad.csv'" in ahgd(
            "quarantine", "release", "bda.csv", code=1).stderr
        ahgd("quarantine", "release", "bad.csv")
        wait_until(lambda: _count(state, "SELECT COUNT(*) FROM events WHERE type = "
                                         "'file.quarantined'") == 2, 15, "bad.csv taken again")
        assert _count(state, "SELECT COUNT(*) FROM events WHERE type = 'file.released'") == 1
        assert _count(state, "SELECT COUNT(*) FROM events WHERE type = 'file.duplicate'") == 0
        kept = ahgd.json("quarantine", "purge", "--older-than", "30d")
        assert kept["removed"] == [] and kept["kept"] == 1
        purged = ahgd.json("quarantine", "purge", "--older-than", "0")
        assert [Path(q["path"]).name for q in purged["removed"]] == ["bad.csv"]
        assert ahgd.json("quarantine", "list") == []
        expired = query(state, "SELECT json_extract(payload, '$.area'), json_extract(payload, "
                               "'$.bytes') FROM events WHERE type = 'file.expired'")
        assert expired == [("quarantine", 8)]

        # -- backfill: one run per tick, a second one requests nothing ---------------------------
        first = ahgd.json("backfill", "ops", "--from", "2026-11-01", "--to", "2026-11-03")
        assert first["ticks"] == 3 and len(first["requested"]) == 3
        wait_until(lambda: _count(state, "SELECT COUNT(*) FROM runs WHERE trigger = 'backfill' "
                                         "AND state = 'COMPLETED'") == 3, 60, "the backfill")
        second = ahgd.json("backfill", "ops", "--from", "2026-11-01", "--to", "2026-11-03")
        assert second["backfill"] == first["backfill"] and second["requested"] == []
        assert second["already_run"] == 3
        ticks = query(state, "SELECT json_extract(params, '$.fire_time') FROM runs WHERE "
                             "trigger = 'backfill' ORDER BY 1")
        assert [t[0] for t in ticks] == ["2026-10-31T15:00:00.000000Z",
                                         "2026-11-01T15:00:00.000000Z",
                                         "2026-11-02T15:00:00.000000Z"]
        assert "has no schedule trigger 'nightly'" in ahgd(
            "backfill", "ops", "--from", "2026-11-01", "--to", "2026-11-02", "--trigger",
            "nightly", code=1).stderr

        # -- a backfill cancelled as a group: its runs wait (paused), then are cancelled -------
        ahgd("pause", "ops")
        group = ahgd.json("backfill", "ops", "--from", "2026-10-01", "--to", "2026-10-05")
        assert len(group["requested"]) == 5 and group["paused"] is not None
        out = ahgd("cancel", group["backfill"]).stdout
        assert "5 run(s) cancelled" in out
        assert _count(state, "SELECT COUNT(*) FROM runs WHERE state = 'CANCELLED' AND "
                             "json_extract(params, '$.backfill') = ?", (group["backfill"],)) == 5
        ahgd("resume", "ops")

        # -- `ahgd logs --follow` tails a running run to its end ---------------------------------
        ahgd("run", "ops", "--param", "sleep=2", "--no-wait")
        slow = _run_ids(state, "trigger = 'manual'")[-1]
        follow = subprocess.Popen([*ahgd_exe(), "logs", slow, "--follow", "--state-dir",
                                   str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env(), cwd=REPO)
        out, err = follow.communicate(timeout=60)
        assert follow.returncode == 0, err
        assert "extract_params" in out and "run.completed" in out
    finally:
        assert d.stop() == 0
