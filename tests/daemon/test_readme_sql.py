"""Every SQL example of the README, run against a real history, gives the right answer.

The history is made the way a user makes one: ``ahgd demo`` (the bundled pipelines on the
bundled files), then the real daemon and CLI on more pipelines: a file with rows that a
validation rule quarantines, a symbolic link dropped into a folder, a stage that needs a
retry, a run that fails and is retried by hand after its recorded output was changed on
disk, a run that stays failed, the warehouse deleted and rebuilt.  Two older runs, a week
ago, are recorded through the event log with its clock set back: one inside the last seven
days, one on the seventh day back but earlier in the day than now (which a comparison with
``datetime('now', '-7 days')`` wrongly counts).  Each example's answer is then checked
against what the history holds, worked out in Python from the tables and the events.

Every example is found in README.md (```sql blocks, inline `SELECT ...` spans, and the
quoted SQL of ```sh blocks): an example without a check here fails the test.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import textwrap
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from state import EventLog, EventType as T, format_ts, new_event, parse_ts

from .harness import REPO, Daemon, ahgd_exe, env, write_rejecting_pipeline

MASTER = REPO / "pipelines" / "ahgd" / "config" / "master.yaml"
SEIFA = REPO / "pipelines" / "ahgd" / "data" / "seifa_2021_sa2.csv"


# --------------------------------------------------------------------------- the examples

def readme_examples(text: str) -> list[str]:
    """Every SQL statement the README shows, whitespace collapsed."""
    found: list[str] = []
    for block in re.findall(r"```sql\n(.*?)```", text, re.S):
        body = "\n".join(line for line in block.splitlines() if not line.startswith("--"))
        found += [s for s in body.split(";") if s.strip()]
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        found += re.findall(r'"(SELECT [^"]*)"', block)
    found += re.findall(r"`(SELECT [^`]*)`", text)
    return [" ".join(s.split()) for s in found]


# --------------------------------------------------------------------------- the history

def _ahgd(*args, ok=(0,)):
    proc = subprocess.run([*ahgd_exe(), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env())
    assert proc.returncode in ok, proc.stdout + proc.stderr
    return proc


def _extra_config(tmp: Path) -> Path:
    write_rejecting_pipeline(tmp, "checked")
    (tmp / "flaky.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: flaky}
        duckdb: {inline_tables: false}   # its extract's file is damaged (the invalidation example)
        stages:
          - {name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}
          - {name: transform, type: transformer, class: tests.daemon.toggle_stages.FailFirstAttempts,
             retry_attempts: 1, retry_delay: PT0.1S}
          - {name: load, type: loader, class: tests.daemon.toggle_stages.FailUntilFlag, retry_attempts: 0}
        """))
    (tmp / "stubborn.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: stubborn}
        stages:
          - {name: extract, type: extractor, class: tests.daemon.toggle_stages.FailUntilFlag,
             config: {flag: never}, retry_attempts: 0}
        """))
    extra = tmp / "extra.yaml"
    extra.write_text(textwrap.dedent("""\
        pipelines:
          - {name: checked, config_file: checked.yaml}
          - {name: flaky, config_file: flaky.yaml}
          - {name: stubborn, config_file: stubborn.yaml}
        """))
    return extra


def _record_old_runs(state: Path, now: datetime) -> dict[str, str]:
    """Two runs of pipeline 'archive' a week ago, through the event log's own clock."""
    boundary_day = (now - timedelta(days=7)).replace(hour=0, minute=0, second=0, microsecond=0)
    # on that day, before the boundary: an hour before it, or (between 00:00 and 01:00)
    # halfway between midnight and it
    outside = max(now - timedelta(days=7, hours=1),
                  boundary_day + (now - timedelta(days=7) - boundary_day) / 2)
    starts = {"archive-inside": now - timedelta(days=6), "archive-outside": outside}
    lengths = {"archive-inside": 30.0, "archive-outside": 100.0}
    for run_id, start in starts.items():
        times = iter([start, start, start + timedelta(seconds=1),
                      start + timedelta(seconds=1 + lengths[run_id]),
                      start + timedelta(seconds=2 + lengths[run_id])])
        with EventLog(state / "history.db", clock=lambda: next(times)) as log:
            log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="archive", trigger="manual"))
            log.append(new_event(T.RUN_STARTED, run_id, stages=["crunch"]))
            log.append(new_event(T.STAGE_STARTED, run_id, stage="crunch", attempt=1))
            log.append(new_event(T.STAGE_COMPLETED, run_id, stage="crunch", attempt=1,
                                 rows=1, peak_rss_mb=10.0))
            log.append(new_event(T.RUN_COMPLETED, run_id))
    assert outside.date() == boundary_day.date() and outside < now - timedelta(days=7)
    return {k: format_ts(v) for k, v in starts.items()}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    day = datetime.now(timezone.utc).date()     # "today" for check_ran_today, before any run
    tmp = tmp_path_factory.mktemp("readme-sql")
    state = tmp / "state"
    extra = _extra_config(tmp)
    configs = ["--config", MASTER, "--config", extra, "--state-dir", state]
    _ahgd("demo", "--state-dir", state)
    (state / "inbox" / "seifa_sa2" / "link.csv").symlink_to(SEIFA)
    (state / "inbox" / "seifa_sa2" / "empty.csv").write_text("")     # quarantined
    checked = state / "inbox" / "checked"
    checked.mkdir(parents=True)
    (checked / ".c.csv").write_text("a,b\nok,1\nbad,2\nok,3\n")
    (checked / ".c.csv").rename(checked / "c.csv")
    d = Daemon(MASTER, state, once=True, args=["--config", str(extra)])
    assert d.wait(timeout=120) == 0, d.output()
    (tmp / "in.csv").write_text("a,b\nx,1\ny,2\n")
    _ahgd("run", "flaky", "--input", tmp / "in.csv", *configs, ok=(1,))
    _ahgd("run", "stubborn", *configs, ok=(1,))
    flaky = _query(state, "SELECT run_id FROM runs WHERE pipeline = 'flaky'")[0][0]
    with open(state / "data" / flaky / "extract-a1.duckdb", "ab") as f:
        f.write(b"\0" * 4096)                       # the recorded output, changed on disk
    (state / "ok").write_text("")
    _ahgd("retry", flaky, *configs)
    (state / "warehouse.duckdb").unlink()           # lost ...
    d = Daemon(MASTER, state, once=True, args=["--config", str(extra)])
    assert d.wait(timeout=120) == 0, d.output()
    _ahgd("warehouse", "rebuild", *configs)         # ... and rebuilt
    keep_one = tmp / "extra-retain.yaml"            # retention: older runs' outputs removed
    keep_one.write_text(extra.read_text() + "retain: {successful_runs: 1}\n")
    _ahgd("gc", "--config", MASTER, "--config", keep_one, "--state-dir", state)
    now = datetime.now(timezone.utc)
    old = _record_old_runs(state, now)
    return {"state": state, "flaky": flaky, "old": old, "tmp": tmp, "day": day}


def _query(state: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{state / 'history.db'}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def _dicts(state: Path, table: str) -> list[dict]:
    conn = sqlite3.connect(f"file:{state / 'history.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
    finally:
        conn.close()


def _seconds(a: str | None, b: str | None) -> float | None:
    return None if a is None or b is None else (parse_ts(b) - parse_ts(a)).total_seconds()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _executions(state: Path, run_id: str) -> tuple[list[str], float]:
    """The starts of a run's executions and the seconds they ran, from its events."""
    events = _query(state, "SELECT type, ts FROM events WHERE run_id = ? ORDER BY seq", (run_id,))
    starts, total, since = [], 0.0, None
    for i, (kind, ts) in enumerate(events):
        if kind == "run.started":
            starts.append(ts)
            since = ts
        elif since is not None and kind in ("run.completed", "run.failed", "run.cancelled",
                                            "run.suspended"):
            total += _seconds(since, ts)
            since = None
    return starts, total


# --------------------------------------------------------------------------- the checks

def check_ran_today(h, rows):
    now = datetime.now(timezone.utc)
    if now.date() != h["day"]:
        pytest.skip(f"the UTC date changed from {h['day']} to {now.date()} since the history "
                    "was made: its runs are no longer 'today' (or only some are), so the "
                    "example's answer cannot be checked against them")
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    groups = defaultdict(list)
    for r in _dicts(h["state"], "run_history"):
        if r["started_at"] and parse_ts(r["started_at"]) >= today:
            groups[(r["pipeline"], r["state"])].append(r["duration_s"])
    expected = {k: (len(v), sum(v) / len(v)) for k, v in groups.items()}
    got = {(p, s): (n, avg) for p, s, n, avg in rows}
    assert got.keys() == expected.keys()
    for key, (n, avg) in got.items():
        # SQLite's ROUND(x, 1) and Python's round() may part on a half (0.95 -> 1.0 or 0.9)
        assert n == expected[key][0] and abs(avg - expected[key][1]) <= 0.05 + 1e-9, key
    assert ("flaky", "COMPLETED") in expected and ("stubborn", "FAILED") in expected
    assert not any(p == "archive" for p, _ in expected)


def check_failures(h, rows):
    state = h["state"]
    expected = [(r[0], r[1], "run", r[2], None, r[3]) for r in _query(
        state, "SELECT ended_at, pipeline, failed_stage, error FROM runs WHERE state IN "
               "('FAILED', 'PARKED')")]
    expected += [(s[0], s[1], "stage", s[2], s[3], s[4]) for s in _query(
        state, "SELECT s.ended_at, r.pipeline, s.stage, s.attempt, s.error FROM stage_runs s "
               "JOIN runs r USING (run_id) WHERE s.state IN ('FAILED', 'TIMED_OUT')")]
    expected.sort(key=lambda r: r[0], reverse=True)
    assert rows == expected[:20]
    assert {(r[1], r[2], r[3]) for r in rows} == {
        ("stubborn", "run", "extract"), ("stubborn", "stage", "extract"),
        ("flaky", "stage", "transform"), ("flaky", "stage", "load")}


def check_slowest_last_week(h, rows):
    since = datetime.now(timezone.utc) - timedelta(days=7)
    groups = defaultdict(list)
    for s in _dicts(h["state"], "stage_timings"):
        if s["started_at"] and parse_ts(s["started_at"]) >= since:
            groups[(s["pipeline"], s["stage"])].append(s)
    expected = {k: (len(v), max((x["duration_s"] for x in v if x["duration_s"] is not None),
                                default=None),
                    max((x["peak_rss_mb"] for x in v if x["peak_rss_mb"] is not None),
                        default=None)) for k, v in groups.items()}
    assert {(p, s): (n, worst, peak) for p, s, n, worst, peak in rows} == expected
    assert expected[("archive", "crunch")] == (1, 30.0, 10.0)   # not the 100 s of day 7
    worst = [r[3] for r in rows]
    assert worst == sorted(worst, key=lambda w: (w is not None, w), reverse=True)


def check_ran_more_than_once(h, rows):
    state, flaky = h["state"], h["flaky"]
    starts, running = _executions(state, flaky)
    assert len(starts) == 2
    ((run_id, retries, recoveries, started, last_started, duration),) = rows
    assert (run_id, retries, recoveries, started, last_started) == (flaky, 1, 0, *starts)
    assert duration == pytest.approx(running, abs=0.002)
    ended = _query(state, "SELECT ended_at FROM runs WHERE run_id = ?", (flaky,))[0][0]
    assert _seconds(started, ended) - duration > 1.0       # the wait for `ahgd retry`


def check_rows(h, rows):
    state = h["state"]
    attempts = _dicts(state, "stage_timings")
    expected = [(a["run_id"], a["pipeline"], a["stage"], a["rows"], a["rows_rejected"])
                for a in sorted(attempts, key=lambda a: a["started_at"] or "")
                if a["stage"] == "load" or (a["rows_rejected"] or 0) > 0]
    assert rows == expected
    loads = {(r[1], r[3]) for r in rows if r[2] == "load" and r[3] is not None}
    assert ("seifa_sa2", 2293) in loads and ("checked", 2) in loads
    assert [(r[1], r[2], r[4]) for r in rows if r[4]] == [("checked", "transform", 1)]
    validated = dict(_query(state, "SELECT run_id, rows FROM stage_runs WHERE stage = "
                                   "'validate' AND state = 'COMPLETED'"))
    for run_id, pipeline, stage, loaded, _ in rows:
        if pipeline in ("seifa_sa2", "mortality_regions", "sa2_health_profile") and loaded:
            assert loaded == validated[run_id]               # what the load got, it wrote


def check_retries(h, rows):
    top = defaultdict(int)
    for s in _dicts(h["state"], "stage_timings"):
        top[(s["run_id"], s["stage"])] = max(top[(s["run_id"], s["stage"])], s["attempt"])
    expected = {(r, s, n) for (r, s), n in top.items() if n > 1}
    assert set(rows) == expected
    assert {(s, n) for r, s, n in rows if r == h["flaky"]} == {
        ("extract", 2), ("transform", 3), ("load", 2)}


def check_retry_decisions(h, rows):
    failed = _query(h["state"], "SELECT run_id, stage, attempt, payload FROM events WHERE type "
                                "IN ('stage.failed', 'stage.timed_out') ORDER BY seq DESC LIMIT 20")
    assert [r[:3] for r in rows] == [f[:3] for f in failed]
    for (run_id, stage, attempt, retried, why), (*_, payload) in zip(rows, failed):
        decision = json.loads(payload)["retry"]
        assert (retried, why) == (int(decision["decision"]), decision["why"]) and why
    by_attempt = {(r[0], r[1], r[2]): r[3] for r in rows}
    assert by_attempt[(h["flaky"], "transform", 1)] == 1    # it was retried, and passed


def check_file_of_runs(h, rows):
    sha = _sha256(SEIFA)
    assert len(rows) == 2 and {r[2] for r in rows} == {sha}   # the demo's run and the rebuild's
    for run_id, input_file, input_sha in rows:
        assert _sha256(Path(input_file)) == input_sha


def check_file_history(h, rows):
    ((pipeline, sha, state, name, size, stored, first, last, run_id, duplicates, _),) = rows
    assert (pipeline, sha, state, name, size) == (
        "seifa_sa2", _sha256(SEIFA), "ARRIVED", "seifa_2021_sa2.csv", SEIFA.stat().st_size)
    assert _sha256(Path(stored)) == sha and duplicates == 0
    assert run_id == _query(h["state"], "SELECT run_id FROM runs WHERE pipeline = 'seifa_sa2' "
                                        "AND trigger = 'drop_folder'")[0][0]


def check_refused(h, rows):
    ((ts, path, reason),) = rows
    assert path == str(h["state"] / "inbox" / "seifa_sa2" / "link.csv")
    assert "symbolic link" in reason and parse_ts(ts) is not None


def check_refused_inline(h, rows):
    ((ts, payload),) = rows
    assert json.loads(payload)["path"].endswith("link.csv")


def _removal_events(h) -> list[dict]:
    rows = _query(h["state"], "SELECT seq, ts, type, payload FROM events WHERE type IN "
                              "('data.expired', 'file.expired') ORDER BY seq")
    return [{"seq": q, "ts": ts, "type": t, **json.loads(p)} for q, ts, t, p in rows]


def check_removals(h, rows):
    removed = _removal_events(h)
    assert any(r["type"] == "data.expired" for r in removed)   # the fixture's ahgd gc
    assert rows == [(r["ts"], r["type"], r["area"], r["path"], r["bytes"], r["rule"], r["reason"])
                    for r in reversed(removed)][:20]
    for r in removed:
        assert not (h["state"] / r["path"]).exists()


def check_removals_by_area(h, rows):
    by_area = defaultdict(lambda: [0, 0])
    for r in _removal_events(h):
        by_area[r["area"]][0] += 1
        by_area[r["area"]][1] += r["bytes"]
    assert sorted(rows) == sorted((a, n, b / 1e9) for a, (n, b) in by_area.items())
    assert dict((a, n) for a, n, _ in rows)["data"] >= 1


def check_invalidated(h, rows):
    # the changed file, and the stage that passed that very file through
    assert [r[:4] for r in rows] == [(h["flaky"], "flaky", "extract", 1),
                                     (h["flaky"], "flaky", "transform", 2)]
    for *_, error in rows:
        assert f"data/{h['flaky']}/extract-a1.duckdb has " in error


def check_warehouse_events(h, rows):
    ((ts, message),) = rows
    assert "warehouse.duckdb" in message


def check_warehouse_alert(h, rows):
    ((state, raised, resolved, resolution),) = rows
    assert state == "RESOLVED" and parse_ts(raised) < parse_ts(resolved)
    assert "rebuilt" in resolution


def check_story(h, rows):
    seqs = [r[0] for r in rows]
    assert seqs == sorted(seqs) and len(rows) == _query(
        h["state"], "SELECT COUNT(*) FROM events WHERE run_id = ?", (h["flaky"],))[0][0]
    kinds = [r[2] for r in rows]
    assert kinds[0] == "run.requested" and kinds[-1] == "run.completed"
    assert {"run.failed", "run.retried", "stage.invalidated"} <= set(kinds)


def check_open_alerts(h, rows):
    firing = {r[0] for r in _query(h["state"], "SELECT alert_id FROM alerts WHERE state = "
                                               "'FIRING'")}
    assert {r[0] for r in rows} == firing
    assert "pipeline.rows_rejected:checked" in firing   # raised by the daemon that ran it


def check_shell_history(h, rows):
    header, *lines = rows
    assert header.split()[:7] == ["run_id", "pipeline", "trigger", "state", "started_at",
                                  "ended_at", "duration_s"]
    newest = _query(h["state"], "SELECT run_id FROM run_history ORDER BY started_at DESC "
                                "LIMIT 10")
    assert [line.split()[0] for line in lines[1:]] == [r[0] for r in newest]  # after ----


def check_lineage(h, rows):
    (row,) = rows
    rebuilt = _query(h["state"], "SELECT run_id FROM runs WHERE pipeline = 'seifa_sa2' AND "
                                 "trigger = 'rebuild'")
    assert row == (_sha256(SEIFA), rebuilt[0][0], 2293)


CHECKS = {
    "SELECT pipeline, state, COUNT(*), ROUND(AVG(duration_s), 1) AS avg_s FROM run_history "
    "WHERE started_at >= date('now') GROUP BY 1, 2": check_ran_today,
    "SELECT failed_at, pipeline, kind, stage, attempt, error FROM failures ORDER BY failed_at "
    "DESC LIMIT 20": check_failures,
    "SELECT pipeline, stage, COUNT(*) AS attempts, MAX(duration_s) AS worst_s, "
    "MAX(peak_rss_mb) AS peak_mb FROM stage_timings WHERE started_at >= "
    "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-7 days') GROUP BY 1, 2 ORDER BY worst_s DESC":
        check_slowest_last_week,
    "SELECT run_id, retries, recoveries, started_at, last_started_at, duration_s FROM "
    "run_history WHERE last_started_at > started_at": check_ran_more_than_once,
    "SELECT run_id, pipeline, stage, rows, rows_rejected FROM stage_timings WHERE stage = "
    "'load' OR rows_rejected > 0 ORDER BY started_at": check_rows,
    "SELECT run_id, stage, MAX(attempt) AS attempts FROM stage_timings GROUP BY 1, 2 HAVING "
    "MAX(attempt) > 1": check_retries,
    "SELECT run_id, stage, attempt, json_extract(payload, '$.retry.decision') AS retried, "
    "json_extract(payload, '$.retry.why') AS why FROM events WHERE type IN ('stage.failed', "
    "'stage.timed_out') ORDER BY seq DESC LIMIT 20": check_retry_decisions,
    "SELECT run_id, input_file, input_sha256 FROM run_history WHERE pipeline = 'seifa_sa2'":
        check_file_of_runs,
    "SELECT * FROM files WHERE sha256 = '…'": check_file_history,
    "SELECT ts, json_extract(payload, '$.path') AS path, json_extract(payload, '$.reason') AS "
    "reason FROM events WHERE type = 'file.refused' ORDER BY seq DESC": check_refused,
    "SELECT run_id, pipeline, stage, attempt, error FROM stage_timings WHERE state = "
    "'INVALIDATED'": check_invalidated,
    "SELECT ts, json_extract(payload, '$.message') FROM events WHERE type = 'warehouse.lost'":
        check_warehouse_events,
    "SELECT state, raised_at, resolved_at, resolution FROM alerts WHERE name = "
    "'warehouse.lost'": check_warehouse_alert,
    "SELECT seq, ts, type, stage, attempt, payload FROM events WHERE run_id = '…' ORDER BY seq":
        check_story,
    "SELECT ts, payload FROM events WHERE type = 'file.refused'": check_refused_inline,
    "SELECT * FROM open_alerts": check_open_alerts,
    "SELECT ts, type, area, path, bytes, rule, reason FROM removals ORDER BY seq DESC LIMIT 20":
        check_removals,
    "SELECT area, COUNT(*), SUM(bytes) / 1e9 AS gb FROM removals GROUP BY area":
        check_removals_by_area,
    "SELECT * FROM run_history ORDER BY started_at DESC LIMIT 10": check_shell_history,
    "SELECT _source_sha256, _run_id, COUNT(*) FROM seifa_sa2 GROUP BY 1, 2": check_lineage,
}
#: what the README leaves for the reader to fill in ('…'), per example
PLACEHOLDERS = {check_file_history: lambda h: _sha256(SEIFA), check_story: lambda h: h["flaky"]}


TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_every_timestamp_ahgd_wrote_has_the_one_format(history):
    """Events, projections, views, migrations, the warehouse's identity, .reason.json files."""
    import duckdb

    state = history["state"]
    written = {}
    for table, columns in {
            "events": ["ts"], "runs": ["requested_at", "started_at", "ended_at"],
            "stage_runs": ["started_at", "ended_at"], "files": ["first_seen", "last_seen"],
            "alerts": ["raised_at", "resolved_at"], "schema_migrations": ["applied_at"]}.items():
        for column in columns:
            written[f"{table}.{column}"] = [r[0] for r in _query(
                state, f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL")]
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as con:
        written["warehouse identity"] = [r[0] for r in con.execute(
            "SELECT created_at FROM _ahgd.identity").fetchall()]
    reasons = sorted((state / "quarantine").rglob("*.reason.json"))
    written[".reason.json"] = [json.loads(r.read_text())["quarantined_at"] for r in reasons]
    assert all(written.values()), {k: v for k, v in written.items() if not v}
    wrong = {k: [v for v in values if not TIMESTAMP.match(v)] for k, values in written.items()}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_every_sql_example_of_the_readme_has_a_check():
    found = readme_examples((REPO / "README.md").read_text())
    assert sorted(set(found)) == sorted(CHECKS)


@pytest.mark.parametrize("sql", sorted(CHECKS))
def test_a_readme_sql_example_gives_the_right_answer(history, sql):
    check = CHECKS[sql]
    if check in PLACEHOLDERS:
        sql = sql.replace("…", PLACEHOLDERS[check](history))
    state = history["state"]
    if check is check_lineage:                      # a DuckDB query of the warehouse
        import duckdb

        with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as con:
            rows = [tuple(r) for r in con.execute(sql).fetchall()]
    elif check is check_shell_history:              # as the README runs it, with sqlite3
        if shutil.which("sqlite3") is None:
            pytest.skip("the sqlite3 shell is not installed (apt-get install sqlite3)")
        rows = subprocess.run(["sqlite3", "-header", "-column", str(state / "history.db"), sql],
                              capture_output=True, text=True, timeout=60,
                              check=True).stdout.splitlines()
    else:
        rows = _query(state, sql)
    check(history, rows)
