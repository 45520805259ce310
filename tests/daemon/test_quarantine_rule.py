"""Quarantine is for files that are bad (issue 13, item 3), with the real daemon.

Only a stage that says the data is bad (``pipelines.InputError``, such as
``ValidationFailed``) sends a dropped file to quarantine.  An error of the
code, the configuration or the machine fails the run and leaves the file in
the store for ``ahgd retry``; a retried run whose file is in quarantine
already does not put a second copy there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.ahgd_truth import SEIFA_CSV, read_rows, seifa_mismatches, table_by

from .harness import Daemon, ahgd_exe, drop_csv, env, query, wait_until, write_config

pytestmark = pytest.mark.slow

BUNDLED = Path(__file__).resolve().parents[2] / "pipelines" / "ahgd" / "config"


@pytest.fixture
def setup(tmp_path: Path):
    """A config directory and an empty state directory side by side."""
    state = tmp_path / "state"
    state.mkdir()
    return tmp_path, state


def quarantined(state: Path) -> list[tuple]:
    return query(state, "SELECT run_id, json_extract(payload, '$.reason') FROM events "
                        "WHERE type = 'file.quarantined' ORDER BY seq")


def test_a_stage_module_that_cannot_be_imported_leaves_a_good_file_for_retry(setup):
    """The real SEIFA file, and a worker that cannot import the extract stage's module (a
    half-deployed release): the run fails, the file is not quarantined, and once the module
    is fixed `ahgd retry` loads every row of it."""
    tmp, state = setup
    marker = tmp / "release-half-deployed"
    (tmp / "seifa_sa2.yaml").write_text(
        (BUNDLED / "seifa_sa2.yaml").read_text()
        .replace("pipelines.ahgd.seifa.SeifaExtractor", "tests.daemon.breakable.SeifaExtractor")
        .replace("../data/seifa_2021_sa2.csv", str(SEIFA_CSV)))
    master = tmp / "master.yaml"
    master.write_text("pipelines:\n  - {name: seifa_sa2, config_file: seifa_sa2.yaml}\n"
                      "daemon: {max_workers: 1, shutdown_grace: PT5S}\n")
    broken = {"AHGD_TEST_BREAK_IMPORT": str(marker)}

    d = Daemon(master, state, extra_env=broken).wait_ready()   # the module imports here
    try:
        marker.touch()                                           # ... and no more in a worker
        inbox = state / "inbox" / "seifa_sa2"
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / ".seifa.csv.part").write_bytes(SEIFA_CSV.read_bytes())
        (inbox / ".seifa.csv.part").rename(inbox / "seifa.csv")
        wait_until(lambda: query(state, "SELECT state FROM runs") == [("FAILED",)], 60,
                   "the run to fail")
    finally:
        assert d.stop() == 0   # the daemon follows up every ended run before it exits
    assert quarantined(state) == [] and not (state / "quarantine").exists()
    [(run_id, params)] = query(state, "SELECT run_id, params FROM runs")
    assert Path(json.loads(params)["input_file"]).is_file()   # still in the store, for retry
    [(payload,)] = query(state, "SELECT payload FROM events WHERE type = 'stage.failed'")
    failed = json.loads(payload)
    assert "cannot import module 'tests.daemon.breakable'" in failed["error"]
    assert "bad_input" not in failed
    assert failed["retry"] == {"decision": False, "why": "ConfigError is a configuration error: "
                               "fix the configuration, then retry the run"}

    marker.unlink()   # the release is complete
    d = Daemon(master, state, extra_env=broken).wait_ready()
    try:
        proc = subprocess.run([*ahgd_exe(), "retry", run_id, "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=180, env=env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        assert d.stop() == 0
    assert query(state, "SELECT state, retries FROM run_history") == [("COMPLETED", 1)]
    assert quarantined(state) == []
    raw = {r["sa2_code_2021"]: r for r in read_rows(SEIFA_CSV)}
    loaded = table_by(state, "seifa_sa2", "sa2_code")
    assert sorted(code for (code,) in loaded) == sorted(raw)
    assert [m for (code,), row in loaded.items() for m in seifa_mismatches(row, raw[code])] == []


def test_an_input_error_quarantines_one_copy_however_often_the_run_is_retried(setup):
    tmp, state = setup
    config = write_config(tmp, extract={"required": ["sa2_code"]},
                          trigger=", quarantine_on_extract_failure: true")
    d = Daemon(config, state).wait_ready()
    try:
        drop_csv(state / "inbox" / "csvpipe", "wrong.csv")
        wait_until(lambda: len(quarantined(state)) == 1, 60, "the file to be quarantined")
        [(run_id,)] = query(state, "SELECT run_id FROM runs")
        proc = subprocess.run([*ahgd_exe(), "retry", run_id, "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=180, env=env())
        assert proc.returncode == 1, proc.stdout + proc.stderr   # the same file fails again
    finally:
        assert d.stop() == 0   # the daemon follows up every ended run before it exits
    assert query(state, "SELECT state, retries FROM run_history") == [("FAILED", 1)]
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'stage.failed' AND "
                        "json_extract(payload, '$.bad_input') = 1") == [(2,)]
    [(quarantined_for, reason)] = quarantined(state)
    assert quarantined_for == run_id
    assert reason.startswith(f"run {run_id} failed at stage 'extract': missing columns: sa2_code")
    folder = state / "quarantine" / "csvpipe"
    assert sorted(p.name for p in folder.iterdir()) == ["wrong.csv", "wrong.csv.reason.json"]
    info = json.loads((folder / "wrong.csv.reason.json").read_text())
    assert info["fix"] == "correct the file and drop it into the folder again"
