"""The warehouse deleted or damaged under the daemon: alerted, then rebuilt (issue 11, item 3).

The real daemon loads the bundled pipelines (the real SEIFA and MORT files
dropped into their inboxes, then the profile built from both).  The warehouse
is deleted: the ``warehouse.lost`` event and alert must appear within a bounded
time; ``ahgd warehouse rebuild`` (through the daemon) must restore every
table, and the restored values are compared with the source files.  Then,
with no daemon, the warehouse is overwritten by a file that is no DuckDB
database: the rebuild in the foreground names the file and the fix, and once
the file is moved aside it restores everything again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ahgd_truth import (MORT_CSV, SEIFA_CSV, latest_sa3_persons, mortality_mismatches,
                              profile_mismatches, read_rows, seifa_mismatches, table_by)

from .harness import REPO, Daemon, ahgd_exe, env, query, wait_until

pytestmark = pytest.mark.slow

BUNDLED = REPO / "pipelines" / "ahgd"
MASTER = BUNDLED / "config" / "master.yaml"
TABLES = {"seifa_sa2": ("sa2_code",), "mortality_region": ("mort_code", "year", "sex"),
          "sa2_health_profile": ("sa2_code",)}


# --------------------------------------------------------------------------- the source files


def compare_with_sources(state: Path) -> int:
    """Every row's key of the three tables, and every column the files give, against the
    raw files (read with the csv module); the number of values compared."""
    seifa, mort = read_rows(SEIFA_CSV), read_rows(MORT_CSV)
    tables = {name: table_by(state, name, *key) for name, key in TABLES.items()}
    assert set(tables["seifa_sa2"]) == {(r["sa2_code_2021"],) for r in seifa}
    assert set(tables["mortality_region"]) == {(r["mort"], int(r["YEAR"]), r["SEX"]) for r in mort}
    assert set(tables["sa2_health_profile"]) == set(tables["seifa_sa2"])
    latest = latest_sa3_persons(mort)
    compared = 0
    for raw in seifa:
        key = (raw["sa2_code_2021"],)
        assert seifa_mismatches(tables["seifa_sa2"][key], raw) == []
        assert profile_mismatches(tables["sa2_health_profile"][key], raw, latest) == []
        compared += 2 * len(raw)
    for raw in mort:
        row = tables["mortality_region"][(raw["mort"], int(raw["YEAR"]), raw["SEX"])]
        assert mortality_mismatches(row, raw) == []
        compared += len(raw)
    return compared


def snapshot(state: Path) -> dict[str, dict]:
    """Every table, every column but the run that loaded it."""
    return {name: {k: {c: v for c, v in row.items() if c != "_run_id"}
                   for k, row in table_by(state, name, *key).items()}
            for name, key in TABLES.items()}


# --------------------------------------------------------------------------- the commands


def ahgd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*ahgd_exe(), *args], capture_output=True, text=True, timeout=timeout,
                          env=env(), cwd=REPO)


def lost_alert(state: Path) -> list[tuple]:
    return query(state, "SELECT state, severity, message FROM alerts "
                        "WHERE alert_id = 'warehouse.lost:warehouse.duckdb'")


def completed(state: Path, pipeline: str) -> int:
    return query(state, "SELECT COUNT(*) FROM runs WHERE pipeline = ? AND state = 'COMPLETED'",
                 (pipeline,))[0][0]


def test_a_deleted_warehouse_is_alerted_and_rebuilt_from_the_stored_inputs(tmp_path):
    state = tmp_path / "state"
    for pipeline, source in (("seifa_sa2", SEIFA_CSV), ("mortality_regions", MORT_CSV)):
        inbox = state / "inbox" / pipeline
        inbox.mkdir(parents=True)
        shutil.copyfile(source, inbox / f"{source.name}.part")
        (inbox / f"{source.name}.part").rename(inbox / source.name)
    d = Daemon(MASTER, state).wait_ready()
    try:
        wait_until(lambda: completed(state, "sa2_health_profile") == 1, 240,
                   "the three bundled pipelines to load")
        before = snapshot(state)
        (state / "warehouse.duckdb").unlink()
        # the daemon's look (on start-up and every 5 s) notices; bounded in time
        [(alert_state, severity, message)] = wait_until(lambda: lost_alert(state), 30,
                                                        "the warehouse.lost alert")
        assert (alert_state, severity) == ("FIRING", "error")
        assert str(state / "warehouse.duckdb") in message and "is gone" in message
        assert f"ahgd warehouse rebuild --state-dir {state}" in message
        [(payload,)] = query(state, "SELECT payload FROM events WHERE type = 'warehouse.lost'")
        assert json.loads(payload)["fields"]["found"] == {"exists": False}
        wait_until(lambda: any(r.get("alert") and r.get("event") == "warehouse.lost"
                               and r.get("alert_state") == "firing" for r in d.records()),
                   10, "the daemon's alert log line")

        plan = ahgd("warehouse", "rebuild", "--dry-run", "--state-dir", str(state))
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert "wave 1: mortality_regions (files/mortality_regions/" in plan.stdout
        assert "wave 2: sa2_health_profile" in plan.stdout
        assert not (state / "warehouse.duckdb").exists()  # a dry run runs nothing

        out = ahgd("warehouse", "rebuild", "--state-dir", str(state))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "run by the daemon" in out.stdout and "alert warehouse.lost" in out.stdout
        assert lost_alert(state)[0][0] == "RESOLVED"
        rebuilt = query(state, "SELECT pipeline, state, json_extract(params, '$.input_sha256') "
                               "FROM runs WHERE trigger = 'rebuild' ORDER BY requested_at")
        assert sorted(r[:2] for r in rebuilt) == [("mortality_regions", "COMPLETED"),
                                                  ("sa2_health_profile", "COMPLETED"),
                                                  ("seifa_sa2", "COMPLETED")]
        assert rebuilt[-1][0] == "sa2_health_profile"  # after both of its sources
        # the same bytes again, although they are duplicates of the files taken first
        taken = dict(query(state, "SELECT pipeline, sha256 FROM files"))
        assert {r[0]: r[2] for r in rebuilt if r[2]} == taken
        assert snapshot(state) == before
        assert compare_with_sources(state) > 100_000
    finally:
        assert d.stop() == 0, d.output()
    assert completed(state, "sa2_health_profile") == 2  # no extra upstream-triggered run

    # no daemon now: a warehouse that is no DuckDB file at all
    (state / "warehouse.duckdb").write_text("sa2_code,irsd\n101021007,1024\n")
    runs_before = query(state, "SELECT COUNT(*) FROM runs")
    refused = ahgd("warehouse", "rebuild", "--config", str(MASTER), "--state-dir", str(state),
                   "--inprocess")
    assert refused.returncode == 1
    target = state / "warehouse.duckdb"
    assert f"the warehouse {target} is not a readable DuckDB database" in refused.stdout + refused.stderr
    assert f"mv {target} {target}.damaged" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    assert query(state, "SELECT COUNT(*) FROM runs") == runs_before  # refused before any run
    assert lost_alert(state)[0][0] == "FIRING"  # and on record, for the next daemon to show
    target.rename(target.with_name("warehouse.duckdb.damaged"))
    again = ahgd("warehouse", "rebuild", "--config", str(MASTER), "--state-dir", str(state),
                 "--inprocess")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "run by this process" in again.stdout
    assert lost_alert(state)[0][0] == "RESOLVED"
    assert snapshot(state) == before
    compare_with_sources(state)
    # one stored file by hand: the same bytes again, accepted, the same rows
    [(stored, sha)] = query(state, "SELECT stored_path, sha256 FROM files WHERE pipeline = "
                                   "'seifa_sa2'")
    by_hand = ahgd("run", "seifa_sa2", "--input", str(state / stored), "--config", str(MASTER),
                   "--state-dir", str(state), "--inprocess")
    assert by_hand.returncode == 0, by_hand.stdout + by_hand.stderr
    assert query(state, "SELECT json_extract(params, '$.input_sha256') FROM runs WHERE trigger "
                        "= 'manual'") == [(sha,)]
    assert snapshot(state)["seifa_sa2"] == before["seifa_sa2"]
    check = ahgd("state", "check", "--state-dir", str(state), timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
