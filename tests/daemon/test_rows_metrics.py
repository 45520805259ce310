"""Loads report the rows they wrote, and rows a validation rule quarantined have a metric
(``ahgd_stage_rows_rejected_total``) and an alert (``pipeline.rows_rejected``, resolved by a
later run that rejects none), live and read back from history."""

from __future__ import annotations

import csv
import re
import subprocess

from .harness import Daemon, ahgd_exe, env, query, write_rejecting_pipeline


def _ahgd(*args):
    return subprocess.run([*ahgd_exe(), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env())


def _config(tmp):
    write_rejecting_pipeline(tmp, "quar")
    master = tmp / "master.yaml"
    master.write_text("pipelines:\n  - {name: quar, config_file: quar.yaml}\n"
                      "daemon: {max_workers: 2, shutdown_grace: PT5S}\n")
    return master


def _drop(state, name, rows):
    folder = state / "inbox" / "quar"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}").write_text("a,b\n" + "".join(f"{a},{i}\n" for i, a in enumerate(rows)))
    (folder / f".{name}").rename(folder / name)


def _once(master, state):
    d = Daemon(master, state, once=True)
    assert d.wait(timeout=120) == 0, d.output()
    return d


def _metric(text, name, stage):
    found = re.search(rf'^{name}{{pipeline="quar",stage="{stage}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def _alert(state):
    return query(state, "SELECT state, message, resolution FROM alerts WHERE alert_id = "
                        "'pipeline.rows_rejected:quar'")


def test_loads_report_rows_and_rejected_rows_have_a_metric_and_an_alert(tmp_path):
    master, state = _config(tmp_path), tmp_path / "state"
    _drop(state, "first.csv", ["ok", "bad", "ok", "worse", "ok"])
    d = _once(master, state)
    live = _ahgd("metrics", "--state-dir", state).stdout      # read back from history
    assert _metric(live, "ahgd_stage_rows_total", "load") == 3.0
    assert _metric(live, "ahgd_stage_rows_rejected_total", "transform") == 2.0
    assert _metric(live, "ahgd_stage_rows_rejected_total", "load") == 0.0
    assert query(state, "SELECT stage, rows FROM stage_timings ORDER BY started_at") == [
        ("extract", 5), ("transform", 3), ("load", 3)]
    ((alert_state, message, _),) = _alert(state)
    run_id = query(state, "SELECT run_id FROM runs")[0][0]
    assert alert_state == "FIRING"
    assert message == (f"run {run_id} of pipeline 'quar' rejected 2 of 5 row(s) at stage "
                       "'transform' (validation_rules with quarantine: true) and carried on "
                       "without them; they are in table transform_rejected (`ahgd export "
                       f"transform_rejected --run {run_id} --stage transform --to FILE.csv`), "
                       "each with its reason in _rejected_reason. Fix them at the source and "
                       "drop the file again")   # small tables: kept in the event log, no file
    out = tmp_path / "rejected.csv"                             # the command it gives works
    done = _ahgd("export", "transform_rejected", "--run", run_id, "--stage", "transform",
                 "--to", out, "--state-dir", state)
    assert done.returncode == 0, done.stderr
    with open(out, newline="") as f:
        assert sorted(r["_rejected_reason"] != "" for r in csv.DictReader(f)) == [True, True]
    firing = [r for r in d.records() if r.get("alert_id") == "pipeline.rows_rejected:quar"]
    assert [(r["alert_state"], r["severity"]) for r in firing] == [("firing", "warning")]

    _drop(state, "clean.csv", ["ok", "ok"])                     # a later clean run resolves it
    _once(master, state)
    ((alert_state, _, resolution),) = _alert(state)
    assert alert_state == "RESOLVED" and resolution.endswith("completed without rejecting a row")
    text = _ahgd("metrics", "--state-dir", state).stdout
    assert _metric(text, "ahgd_stage_rows_total", "load") == 5.0
    assert _metric(text, "ahgd_stage_rows_rejected_total", "transform") == 2.0

    _drop(state, "again.csv", ["bad", "ok"])                    # raised again ...
    _once(master, state)
    assert _alert(state)[0][0] == "FIRING"
    (tmp_path / "fixed.csv").write_text("a,b\nok,1\nok,2\nok,3\n")
    proc = _ahgd("run", "quar", "--input", tmp_path / "fixed.csv", "--config", master,
                 "--state-dir", state)                          # ... cleared with no monitor
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _alert(state)[0][0] == "FIRING"
    _once(master, state)                                        # the daemon sees it cleared
    ((alert_state, _, resolution),) = _alert(state)
    assert alert_state == "RESOLVED"
    assert resolution == "a later run of pipeline 'quar' completed without rejecting a row"
