"""The README's main command, and the bundled pipelines under the real daemon."""

from __future__ import annotations

import json
import shutil
import subprocess

import duckdb

from ahgd_daemon.demo import BUNDLED, MASTER

from .harness import Daemon, ahgd_exe, env, query


def test_ahgd_demo_runs_all_three_pipelines_end_to_end(tmp_path):
    state = tmp_path / "demo"
    proc = subprocess.run([*ahgd_exe(), "demo", "--state-dir", str(state)], capture_output=True,
                          text=True, timeout=600, env=env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "run history" in out and "sa2_health_profile, first rows" in out
    assert "101021007  Braidwood" in out
    seifa_run = query(state, "SELECT run_id FROM runs WHERE pipeline = 'seifa_sa2'")[0][0]
    assert f"seifa_2021_sa2.csv: new, run {seifa_run}" in out
    assert f"ahgd status --state-dir {state}" in out and "--http 127.0.0.1:8787" in out
    runs = query(state, "SELECT pipeline, state, trigger FROM runs ORDER BY requested_at")
    assert sorted(runs) == [("mortality_regions", "COMPLETED", "drop_folder"),
                            ("sa2_health_profile", "COMPLETED", "upstream"),
                            ("seifa_sa2", "COMPLETED", "drop_folder")]
    # the profile ran after both of its inputs had loaded
    times = dict(query(state, "SELECT pipeline, started_at FROM runs"))
    ends = dict(query(state, "SELECT pipeline, ended_at FROM runs"))
    assert times["sa2_health_profile"] > max(ends["seifa_sa2"], ends["mortality_regions"])
    con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
    try:
        assert con.sql("SELECT COUNT(*) FROM sa2_health_profile").fetchall() == [(2293,)]
        lineage = con.sql("SELECT COUNT(DISTINCT _run_id), COUNT(DISTINCT _source_sha256) "
                          "FROM seifa_sa2").fetchall()
        assert lineage == [(1, 1)]
    finally:
        con.close()
    assert (state / "demo-daemon.log").read_text().splitlines()[0].startswith("{")
    # again: the same bytes are duplicates, nothing runs twice, the warehouse is unchanged
    again = subprocess.run([*ahgd_exe(), "demo", "--state-dir", str(state)], capture_output=True,
                           text=True, timeout=600, env=env(), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(query(state, "SELECT 1 FROM runs")) == 3
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'file.duplicate'") == [(2,)]
    # ... and the second demo says so, naming the run that took the bytes first
    assert (f"seifa_2021_sa2.csv: the same bytes as run {seifa_run}'s file, so nothing ran again"
            in again.stdout), again.stdout
    assert ": new, run" not in again.stdout


def test_a_mort_table_in_the_seifa_folder_is_quarantined_naming_the_missing_columns(tmp_path):
    state = tmp_path / "state"
    inbox = state / "inbox" / "seifa_sa2"
    inbox.mkdir(parents=True)
    shutil.copyfile(BUNDLED / "data" / "aihw_mort_table1.csv", inbox / "mort_by_mistake.csv")
    d = Daemon(MASTER, state, once=True)
    assert d.wait(timeout=300) == 0, d.output()
    reason = json.loads((state / "quarantine" / "seifa_sa2" / "mort_by_mistake.csv.reason.json").read_text())
    assert "sa2_code" in reason["reason"] and "irsd" in reason["reason"].lower()
    assert query(state, "SELECT COUNT(*) FROM runs") == [(0,)]  # refused before any run
    alerts = [r for r in d.records() if r.get("alert") and r["event"] == "file.quarantined"]
    assert alerts and alerts[0]["severity"] == "warning"
