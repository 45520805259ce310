"""After a SIGKILL, a recorded output damaged while the daemon was down is made again (issue 11, item 2).

The real daemon runs a three-stage pipeline on a CSV; it is killed with SIGKILL
while the second stage runs; the first stage's DuckDB file is then replaced by
another valid DuckDB file holding other values.  The restarted daemon must not
read it: the first stage runs again (``stage.invalidated`` says why) and every
value the run ends with is compared with the source file.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import textwrap
from pathlib import Path

import duckdb
import pytest

from .harness import Daemon, ahgd_exe, env, query, wait_until

pytestmark = pytest.mark.slow


def write_master(tmp: Path) -> Path:
    (tmp / "values.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: values}
        triggers:
          - {type: drop_folder, path: "${state_dir}/inbox/values", pattern: "*.csv", stable_for: PT0.3S}
        stages:
          - {name: extract, type: extractor, class: tests.daemon.reuse_stages.ValuesExtractor, retry_attempts: 0}
          - {name: transform, type: transformer, class: tests.daemon.reuse_stages.DoublingTransformer, config: {sleep: 120}, retry_attempts: 0}
          - {name: load, type: loader, class: tests.daemon.reuse_stages.RowCounter, retry_attempts: 0}
        """))
    master = tmp / "master.yaml"
    master.write_text("pipelines:\n  - {name: values, config_file: values.yaml}\n"
                      "daemon: {max_workers: 2, shutdown_grace: PT5S}\n")
    return master


def drop_values(inbox: Path, rows: int) -> dict[str, float]:
    rng = random.Random(2026)
    values = {f"c{i:05d}": round(rng.uniform(-500, 5000), 2) for i in range(rows)}
    inbox.mkdir(parents=True, exist_ok=True)
    part = inbox / ".values.csv.part"
    with open(part, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["code", "value"])
        w.writerows(values.items())
    part.rename(inbox / "values.csv")
    return values


def test_an_output_replaced_while_the_daemon_was_down_is_made_again_from_the_source(tmp_path):
    state = tmp_path / "state"
    master = write_master(tmp_path)
    source = drop_values(state / "inbox" / "values", 20_000)
    d = Daemon(master, state).wait_ready()
    [(run_id,)] = wait_until(lambda: query(
        state, "SELECT run_id FROM events WHERE type = 'stage.started' AND stage = 'transform'"),
        60, "transform to start")
    d.kill()  # SIGKILL while transform runs (its first attempt waits 120 s)
    assert query(state, "SELECT state FROM runs WHERE run_id = ?", (run_id,)) == [("RUNNING",)]
    [(ref_text,)] = query(state, "SELECT output FROM stage_runs WHERE run_id = ? AND stage = "
                                 "'extract' AND state = 'COMPLETED'", (run_id,))
    ref = json.loads(ref_text)
    extract_file = state / ref["path"]
    extract_file.unlink()  # another valid DuckDB file: the same codes, other values
    con = duckdb.connect(str(extract_file))
    con.execute("CREATE TABLE output AS SELECT code, value + 1000 AS value FROM "
                "(VALUES ('c00000', 1.0)) AS t(code, value)")
    con.execute("INSERT INTO output SELECT 'c' || lpad(CAST(i AS VARCHAR), 5, '0'), i FROM "
                "range(1, 20000) AS r(i)")
    con.close()

    final = Daemon(master, state, once=True)
    assert final.wait(timeout=120) == 0, final.output()
    assert query(state, "SELECT state FROM runs WHERE run_id = ?", (run_id,)) == [("COMPLETED",)]
    # every value the run ended with, against the source file
    [(out_text,)] = query(state, "SELECT output FROM stage_runs WHERE run_id = ? AND stage = "
                                 "'transform' AND state = 'COMPLETED'", (run_id,))
    con = duckdb.connect(str(state / json.loads(out_text)["path"]), read_only=True)
    try:
        doubled = dict(con.execute("SELECT code, doubled FROM output").fetchall())
    finally:
        con.close()
    assert doubled == {code: value * 2 for code, value in source.items()}
    [(payload,)] = query(state, "SELECT payload FROM events WHERE run_id = ? AND type = "
                                "'stage.invalidated'", (run_id,))
    inv = json.loads(payload)
    assert inv["path"] == ref["path"] and inv["expected"]["sha256"] == ref["sha256"]
    assert inv["found"] != {} and str(extract_file) in inv["error"]
    assert query(state, "SELECT attempt, state FROM stage_runs WHERE run_id = ? AND stage = "
                        "'extract' ORDER BY attempt", (run_id,)) == [(1, "INVALIDATED"),
                                                                      (2, "COMPLETED")]
    check = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=60, env=env())
    assert check.returncode == 0, check.stdout + check.stderr
