"""SIGKILL of the daemon while a run's small tables ride in its events (inline tables).

A small CSV makes every stage's table output inline (``{"kind": "tables", "format":
"inline"}`` in ``stage.completed``, README "Small tables ride in the event"). The daemon
is killed mid-run and restarted: the run completes, a stage whose inline output was
recorded is not run again, and the values that reach the warehouse (and the transform's
recorded output) are the file's, each once. Read back with ``ahgd export``; the file is
read with the csv module.
"""

from __future__ import annotations

import csv
import os
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from .harness import Daemon, ahgd_exe, env, query, traces, wait_until
from .stages import WarehouseLoader, _trace

pytestmark = pytest.mark.slow

#: a stage held by the file ``hold`` goes on after this many seconds however it is
HOLD_S = 60.0


def _held(hold: str) -> None:
    """Wait while the file ``hold`` exists (at most ``HOLD_S``)."""
    deadline = time.monotonic() + HOLD_S
    while hold and os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.05)


class HeldTransformer:
    """``stages.SlowTransformer`` that, after its start trace, waits while ``hold`` exists
    instead of for a fixed time: the test's kill lands in the transform however slow the
    host, and the test removes ``hold`` once the daemon is dead."""

    def __init__(self, hold: str = ""):
        self.hold = hold

    def transform(self, context: Any) -> Any:
        _trace(context, "transform", "start")
        _held(self.hold)
        table = context.output_table("extract")
        rel = context.sql(f"SELECT *, 1 AS seen FROM {table}")
        _trace(context, "transform", "done")
        return rel


class HeldLoader(WarehouseLoader):
    """``stages.WarehouseLoader`` that, after its write (the ``written`` trace), waits while
    ``hold`` exists instead of sleeping ``sleep_after`` seconds."""

    def __init__(self, hold: str = ""):
        super().__init__()
        self.hold = hold

    def after_write(self) -> None:
        _held(self.hold)


def setup(tmp: Path, *, held: str) -> tuple[Path, Path]:
    """A master file with one three-stage pipeline (CSV extract, transform, warehouse load)
    watching ``<state>/inbox/inl``, its ``held`` stage ("transform" or "load") held while
    the file ``<tmp>/hold`` exists (made here); returns (master, state dir)."""
    state = tmp / "state"
    state.mkdir()
    hold = tmp / "hold"
    hold.touch()
    transform = ("tests.daemon.test_crash_inline.HeldTransformer" if held == "transform"
                 else "tests.daemon.stages.SlowTransformer")
    load = ("tests.daemon.test_crash_inline.HeldLoader" if held == "load"
            else "tests.daemon.stages.WarehouseLoader")
    hold_config = f'config: {{hold: "{hold}"}}, '
    (tmp / "inl.yaml").write_text(textwrap.dedent(f"""\
        pipeline: {{name: inl}}
        triggers:
          - {{type: drop_folder, path: "${{state_dir}}/inbox/inl", pattern: "*.csv", stable_for: PT0.2S}}
        stages:
          - {{name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}}
          - {{name: transform, type: transformer, class: {transform}, {hold_config if held == "transform" else ""}retry_attempts: 0}}
          - {{name: load, type: loader, class: {load}, {hold_config if held == "load" else ""}retry_attempts: 0}}
        """))
    master = tmp / "master.yaml"
    master.write_text("pipelines:\n  - {name: inl, config_file: inl.yaml}\n"
                      "daemon: {max_workers: 2, shutdown_grace: PT5S}\n")
    return master, state


def drop_rows(state: Path, name: str, rows: int = 30) -> list[list[str]]:
    """A small CSV (commas, quotes, non-ASCII in its cells) renamed into the inbox; its rows
    as the csv module reads them back."""
    folder = state / "inbox" / "inl"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.part"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "amount"])
        for i in range(rows):
            w.writerow([f"{i:03d}", f'Zoë "{i}", Smith' if i % 3 else f"plain {i}", f"{i * 7}.25"])
    tmp.rename(folder / name)
    with open(folder / name, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


def exported(state: Path, tmp: Path, table: str, *run_stage: str) -> list[list[str]]:
    """``ahgd export TABLE [--run RUN --stage STAGE] --to X.csv``, read with the csv module."""
    target = tmp / f"export-{table}-{'-'.join(run_stage) or 'warehouse'}.csv"
    extra = ["--run", run_stage[0], "--stage", run_stage[1]] if run_stage else []
    out = subprocess.run([*ahgd_exe(), "export", table, *extra, "--to", str(target),
                          "--state-dir", str(state)], check=False, capture_output=True,
                         text=True, timeout=60, env=env())
    assert out.returncode == 0, out.stdout + out.stderr
    with open(target, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def formats(state: Path, run_id: str) -> dict[str, list[tuple[int, str, str | None]]]:
    """stage -> [(attempt, state, recorded output format)] of the run."""
    out: dict[str, list[tuple[int, str, str | None]]] = {}
    for stage, attempt, st, fmt in query(
            state, "SELECT stage, attempt, state, json_extract(detail, '$.output.format') "
            "FROM stage_runs WHERE run_id = ? ORDER BY stage, attempt", (run_id,)):
        out.setdefault(stage, []).append((attempt, st, fmt))
    return out


#: a run's own events (not retention's, which may come later)
RUN_EVENTS = ("SELECT seq, stage, attempt, type FROM events WHERE run_id = ? "
              "AND (type LIKE 'run.%' OR type LIKE 'stage.%') ORDER BY seq")


def executions(state: Path, stage: str, event: str) -> int:
    return sum(1 for t in traces(state) if t["stage"] == stage and t["event"] == event)


def check_values(state: Path, tmp: Path, run_id: str, source: list[list[str]]) -> None:
    """The transform's recorded output and the warehouse hold the file's rows, each once."""
    assert exported(state, tmp, "output", run_id, "transform") == (
        [["id", "name", "amount", "seen"]] + [r + ["1"] for r in source])
    loaded = exported(state, tmp, "loaded")
    assert loaded[0] == ["run_id", "id", "name", "amount", "seen"]
    assert sorted(loaded[1:]) == sorted([run_id] + r + ["1"] for r in source)
    # the inline tables reused on recovery matched their recorded SHA-256
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'stage.invalidated'") == [(0,)]
    check = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                           check=False, capture_output=True, text=True, timeout=60,
                           env=env())
    assert check.returncode == 0, check.stdout + check.stderr


def killed_when(master: Path, state: Path, stage: str, what: str) -> tuple[str, Path]:
    """Start the daemon, drop the CSV, SIGKILL the daemon once ``stage`` has reached ``what``
    (its trace; the stage is held there by ``hold``, see :func:`setup`), then let go of the
    hold for the restart: the run's id and the source CSV."""
    d = Daemon(master, state).wait_ready()
    try:
        source = drop_rows(state, "small.csv")
        wait_until(lambda: executions(state, stage, what), 30, f"the {stage} to reach {what!r}",
                   interval=0.01)
    finally:
        d.kill()
        (state.parent / "hold").unlink(missing_ok=True)
    (run_id,), = query(state, "SELECT run_id FROM runs")
    return run_id, source


@pytest.mark.parametrize("restart_env, transform_format", [
    ({}, "inline"),
    # inline tables turned off across the crash: the recorded inline extract is still read,
    # the transform run again writes a file
    ({"AHGD_INLINE_TABLE_BYTES": "0"}, "duckdb"),
], ids=["inline", "turned-off-on-restart"])
def test_sigkill_in_the_transform_reuses_the_inline_extract(tmp_path, restart_env,
                                                            transform_format):
    master, state = setup(tmp_path, held="transform")
    run_id, source = killed_when(master, state, "transform", "start")
    # the kill landed after the extract's inline output was recorded, before the transform's
    assert formats(state, run_id) == {"extract": [(1, "COMPLETED", "inline")],
                                      "transform": [(1, "RUNNING", None)]}, formats(state, run_id)

    final = Daemon(master, state, once=True, extra_env=restart_env)
    assert final.wait(timeout=60) == 0, final.output()
    assert query(state, "SELECT state, recoveries FROM runs") == [("COMPLETED", 1)]
    assert formats(state, run_id) == {
        "extract": [(1, "COMPLETED", "inline")],          # not run again: its event was reused
        "transform": [(1, "INTERRUPTED", None), (2, "COMPLETED", transform_format)],
        "load": [(1, "COMPLETED", "inline")]}, formats(state, run_id)
    assert executions(state, "extract", "start") == 1
    check_values(state, tmp_path, run_id, source)


def test_sigkill_after_the_load_wrote_and_after_the_run_completed(tmp_path):
    """Killed after the loader's warehouse write (before its stage.completed), then again
    right after run.completed: the load runs again, nothing is loaded or recorded twice."""
    master, state = setup(tmp_path, held="load")
    run_id, source = killed_when(master, state, "load", "written")
    assert [s for s, in query(state, "SELECT state FROM stage_runs WHERE stage = 'load'")] == [
        "RUNNING"]

    d = Daemon(master, state).wait_ready()
    try:
        wait_until(lambda: query(state, "SELECT 1 FROM events WHERE type = 'run.completed'"),
                   30, "the recovered run to complete", interval=0.005)
    finally:
        d.kill()
    events = query(state, RUN_EVENTS, (run_id,))
    final = Daemon(master, state, once=True)
    assert final.wait(timeout=60) == 0, final.output()
    # the completed run is left alone: no event of it added, no stage of it started again
    # (retention may expire its folder now, once, if the kill came before it did)
    assert query(state, RUN_EVENTS, (run_id,)) == events
    assert query(state, "SELECT COUNT(*) FROM events WHERE run_id = ? AND type = "
                 "'data.expired'", (run_id,))[0][0] <= 1
    assert query(state, "SELECT state, recoveries FROM runs") == [("COMPLETED", 1)]
    assert formats(state, run_id) == {
        "extract": [(1, "COMPLETED", "inline")], "transform": [(1, "COMPLETED", "inline")],
        "load": [(1, "INTERRUPTED", None), (2, "COMPLETED", "inline")]}, formats(state, run_id)
    assert [executions(state, s, "start") for s in ("extract", "transform", "load")] == [1, 1, 2]
    completed = query(state, "SELECT stage, COUNT(*) FROM events WHERE run_id = ? AND type = "
                      "'stage.completed' GROUP BY 1 ORDER BY 1", (run_id,))
    assert completed == [("extract", 1), ("load", 1), ("transform", 1)], completed
    check_values(state, tmp_path, run_id, source)
