"""A resumed run never reads a recorded output that changed since it was recorded (issue 11, item 2).

Real SQLite and DuckDB files in a temp state directory.  A run stops after an
early stage completed (its next stage fails once); the early stage's file is
replaced by another valid DuckDB file, truncated or deleted; the run is retried
(``run.retried`` + ``execute_run``, what ``ahgd retry`` does).  The stage runs
again, ``stage.invalidated`` says what was expected and what was found, and
every value the run ends with is compared with the source CSV (read with the
csv module, never through the pipeline).
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines import BasePipeline, ResumeRefused
from state import EventLog, EventType as T, new_event

from .sample_pipelines import fail_if_flagged

GROUPS = 1500   # enough groups that the sums (a plain value) exceed the inline limit: a .json file


def write_source(path: Path, rows: int = 6000, seed: int = 7) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["grp", "value"])
        for i in range(rows):
            w.writerow([f"g{i % GROUPS:04d}", rng.randint(-1000, 100000)])
    return path


def expected_sums(path: Path) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            sums[row["grp"]] += int(row["value"])
    return dict(sums)


class SumPipeline(BasePipeline):
    """extract (CSV -> table) -> transform (sums per group) -> load (the sums as a plain value).

    A stage fails once while the file ``<state>/fail-<stage>`` exists (it removes it), so
    a test can stop a run after the stages before it.  While ``<state>/sabotage`` exists,
    ``transform`` truncates extract's file once it has read it, as a user might behind the
    daemon's back; ``load_reads_extract`` makes load read that file too.  ``pickled``
    returns the sums with int keys (pickle, not JSON).
    """

    def __init__(self, name: str = "sums", *, pickled: bool = False,
                 load_reads_extract: bool = False, **kw: Any):
        kw.setdefault("executor", "inprocess")
        kw.setdefault("max_retries", 0)
        super().__init__(name, **kw)
        self.pickled, self.load_reads_extract = pickled, load_reads_extract

    def define_stages(self) -> list[str]:
        return ["extract", "transform", "load"]

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        if stage_name == "load" and self.load_reads_extract:
            return {"extract", "transform"}
        return super().get_stage_dependencies(stage_name)

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        fail_if_flagged(context, stage_name)
        if stage_name == "extract":
            return context.sql("SELECT grp, CAST(value AS BIGINT) AS value FROM "
                               "read_csv(?, header = true, all_varchar = true)",
                               [str(context.input_file)])
        if stage_name == "transform":
            rows = context.sql(f"SELECT grp, SUM(value)::BIGINT FROM "
                               f"{context.output_table('extract')} GROUP BY grp").fetchall()
            sabotage = Path(context.state_dir) / "sabotage"
            if sabotage.exists():
                sabotage.unlink()
                context.close()
                _truncate(Path(context.state_dir) / context.output_ref("extract")["path"])
            sums = {g: int(v) for g, v in rows}
            return {int(g[1:]): v for g, v in sums.items()} if self.pickled else sums
        sums = context.get_output("transform")
        if self.load_reads_extract:
            table = context.output_table("extract")
            n = context.duckdb.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            return {"sums": sums, "rows": n}
        return sums


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def stop_after(p: SumPipeline, state: Path, source: Path, failing: str, **kw: Any):
    """A run that completed every stage before ``failing`` and failed there."""
    (state / f"fail-{failing}").write_text("")
    ctx = p.run(input_file=source, **kw)
    assert ctx.state == "FAILED" and ctx.failed_stage == failing, (ctx.state, ctx.error)
    return ctx


def retry(p: SumPipeline, run_id: str):
    """What `ahgd retry RUN_ID` does without a daemon."""
    log = p._open_log()
    log.append(new_event(T.RUN_RETRIED, run_id, previous_state="FAILED"))
    return p.execute_run(run_id)


def recorded_file(state: Path, run_id: str, stage: str) -> Path:
    with EventLog.open(state) as log:
        return state / log.run(run_id).attempts[stage].output["path"]


def invalidations(state: Path, run_id: str) -> list[dict]:
    with EventLog.open(state) as log:
        return [dict(e.payload, stage=e.stage, attempt=e.attempt)
                for e in log.events(run_id=run_id) if e.type == T.STAGE_INVALIDATED]


def attempts(state: Path, run_id: str, stage: str) -> list[tuple]:
    with EventLog.open(state) as log:
        return [tuple(r) for r in log.query(
            "SELECT attempt, state FROM stage_runs WHERE run_id = ? AND stage = ? ORDER BY attempt",
            [run_id, stage])]


def final_sums(ctx: Any) -> dict[str, int]:
    value = ctx.get_output("load")
    value = value["sums"] if "sums" in value else value
    return {(f"g{k:04d}" if isinstance(k, int) else k): v for k, v in value.items()}


def other_duckdb(path: Path, source: Path) -> None:
    """Replace ``path`` with another valid DuckDB file: same table, same rows, other values."""
    path.unlink()
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE output AS SELECT grp, CAST(value AS BIGINT) + 1 AS value FROM "
                "read_csv(?, header = true, all_varchar = true)", [str(source)])
    con.close()


def check_consistent(state: Path) -> None:
    with EventLog.open(state) as log:
        assert log.check().ok, log.check().differences


@pytest.mark.parametrize("damage", ["replaced", "truncated", "deleted"])
def test_a_retried_run_runs_a_stage_again_whose_duckdb_output_changed(state_dir, tmp_path, damage):
    source = write_source(tmp_path / "values.csv")
    p = SumPipeline(state_dir=state_dir)
    first = stop_after(p, state_dir, source, "transform")
    extract_file = recorded_file(state_dir, first.run_id, "extract")
    recorded = json.loads(json.dumps(first.stage_results["extract"].output))
    if damage == "replaced":
        other_duckdb(extract_file, source)
    elif damage == "truncated":
        _truncate(extract_file)
    else:
        extract_file.unlink()
    ctx = retry(p, first.run_id)
    assert ctx.state == "COMPLETED", ctx.error
    assert final_sums(ctx) == expected_sums(source)
    [inv] = invalidations(state_dir, first.run_id)
    assert (inv["stage"], inv["attempt"], inv["path"]) == ("extract", 1, recorded["path"])
    assert inv["expected"] == {"bytes": recorded["bytes"], "sha256": recorded["sha256"]}
    assert str(extract_file) in inv["error"] and "runs again" in inv["error"]
    if damage == "deleted":
        assert inv["found"] == {"exists": False} and "is gone" in inv["error"]
    elif damage == "truncated":
        assert inv["found"] == {"bytes": recorded["bytes"] // 2}
    else:
        assert inv["found"]["sha256"] != recorded["sha256"] or inv["found"]["bytes"] != recorded["bytes"]
    assert attempts(state_dir, first.run_id, "extract") == [(1, "INVALIDATED"), (2, "COMPLETED")]
    assert "IOException" not in json.dumps([r.error for r in ctx.stage_results.values()])
    check_consistent(state_dir)


@pytest.mark.parametrize("pickled", [False, True], ids=["json", "pickle"])
def test_a_plain_value_stored_in_a_file_is_checked_and_remade(state_dir, tmp_path, pickled):
    source = write_source(tmp_path / "values.csv")
    p = SumPipeline(state_dir=state_dir, pickled=pickled)
    first = stop_after(p, state_dir, source, "load")
    value_file = recorded_file(state_dir, first.run_id, "transform")
    assert value_file.suffix == (".pkl" if pickled else ".json")
    if pickled:
        _truncate(value_file)
    else:  # same size, other numbers: only the hash can tell
        text = value_file.read_text()
        value_file.write_text(text.replace("1", "2"))
        assert value_file.stat().st_size == len(text)
    ctx = retry(p, first.run_id)
    assert ctx.state == "COMPLETED", ctx.error
    assert final_sums(ctx) == expected_sums(source)
    [inv] = invalidations(state_dir, first.run_id)
    assert inv["stage"] == "transform" and str(value_file) in inv["error"]
    assert attempts(state_dir, first.run_id, "transform") == [(1, "INVALIDATED"), (2, "COMPLETED")]
    assert attempts(state_dir, first.run_id, "extract") == [(1, "COMPLETED")]  # intact: kept
    check_consistent(state_dir)


def test_an_output_reused_from_another_run_is_checked_when_the_run_resumes(state_dir, tmp_path):
    source = write_source(tmp_path / "values.csv")
    p = SumPipeline(state_dir=state_dir)
    done = p.run(input_file=source)
    assert done.state == "COMPLETED", done.error
    reused = recorded_file(state_dir, done.run_id, "extract")
    # a fresh resume from a damaged output is refused, naming the file and the stage to
    # resume from instead
    _truncate(reused)
    with pytest.raises(ResumeRefused) as refused:
        p.run(resume_from="transform", input_file=source)
    assert str(reused) in str(refused.value) and "resume from 'extract' instead" in str(refused.value)
    again = p.run(input_file=source)  # a complete run whose outputs are intact, to resume from ...
    reused = recorded_file(state_dir, again.run_id, "extract")
    second = stop_after(p, state_dir, source, "transform", resume_from="transform")
    with EventLog.open(state_dir) as log:
        assert log.run(second.run_id).attempts["extract"].state == "COMPLETED"  # stage.reused
    other_duckdb(reused, source)  # ... and damaged once the run has reused it
    ctx = retry(p, second.run_id)
    assert ctx.state == "COMPLETED", ctx.error
    assert final_sums(ctx) == expected_sums(source)
    [inv] = invalidations(state_dir, second.run_id)
    assert (inv["stage"], inv["attempt"], inv["from_run"]) == ("extract", 0, again.run_id)
    assert str(reused) in inv["error"]
    assert attempts(state_dir, second.run_id, "extract") == [(0, "INVALIDATED"), (1, "COMPLETED")]
    check_consistent(state_dir)


def test_a_file_truncated_while_the_run_goes_on_is_caught_before_the_next_stage_reads_it(
        state_dir, tmp_path):
    source = write_source(tmp_path / "values.csv")
    (state_dir / "sabotage").write_text("1")
    ctx = SumPipeline(state_dir=state_dir, load_reads_extract=True).run(input_file=source)
    assert ctx.state == "COMPLETED", ctx.error
    assert final_sums(ctx) == expected_sums(source)
    assert ctx.get_output("load")["rows"] == 6000
    [inv] = invalidations(state_dir, ctx.run_id)
    assert inv["stage"] == "extract" and inv["found"]["bytes"] < inv["expected"]["bytes"]
    assert attempts(state_dir, ctx.run_id, "extract") == [(1, "INVALIDATED"), (2, "COMPLETED")]
    check_consistent(state_dir)


class SelfDamaging(BasePipeline):
    """a -> b -> c, where b passes a's table through (the same file) after truncating it:
    every time a runs again, b damages its new file."""

    def define_stages(self) -> list[str]:
        return ["a", "b", "c"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "a":
            return context.sql("SELECT range AS n FROM range(50000)")
        if stage_name == "b":
            _truncate(Path(context.state_dir) / context.output_ref("a")["path"])
            return context.passthrough("a")
        return context.duckdb.execute(f"SELECT COUNT(*) FROM {context.output_table('b')}").fetchone()[0]


def test_an_output_that_keeps_going_bad_fails_the_run_instead_of_looping(state_dir):
    ctx = SelfDamaging("selfdamaging", state_dir=state_dir, executor="inprocess").run()
    assert ctx.state == "FAILED" and ctx.failed_stage == "a", ctx.error
    assert "found gone or altered 3 times" in ctx.error and f"ahgd retry {ctx.run_id}" in ctx.error
    inv = invalidations(state_dir, ctx.run_id)
    # a's file is b's output too (a passthrough): both are invalidated each time
    assert [(i["stage"], i["attempt"]) for i in inv] == [
        ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert "c" not in {s for s, _ in attempts_of(state_dir, ctx.run_id)}
    check_consistent(state_dir)


def attempts_of(state: Path, run_id: str) -> list[tuple]:
    with EventLog.open(state) as log:
        return [tuple(r) for r in log.query(
            "SELECT stage, attempt FROM stage_runs WHERE run_id = ?", [run_id])]
