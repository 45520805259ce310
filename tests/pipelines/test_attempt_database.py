"""Attempts' DuckDB files on a warm DuckDB instance (pipelines.attemptdb, issue 18 item 2):
one instance per thread, reused by the next attempt, with nothing of one attempt reaching
the next, inputs read-only, and each file complete (its recorded SHA-256) once closed."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from pipelines import PipelineContext, attemptdb
from pipelines.execution.runner import StageTask, run_task
from state import store
from state.digest import sha256_file


def attempt(state_dir: Path, run_id: str, stage: str, outputs: dict | None = None) -> PipelineContext:
    return PipelineContext(run_id=run_id, pipeline_name="p", state_dir=state_dir,
                           stage_name=stage, attempt=1, outputs=outputs or {},
                           input_stages=tuple(outputs or ()))


def catalogs(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT database_name FROM duckdb_databases() "
                                      "WHERE NOT internal ORDER BY 1").fetchall()]


def test_attempts_of_a_thread_share_one_instance_and_nothing_else(state_dir):
    first = attempt(state_dir, "run-1", "extract")
    first.duckdb.execute("CREATE TABLE output AS SELECT range AS id FROM range(5)")
    first.duckdb.execute("CREATE TEMP TABLE scratch AS SELECT 1 AS x")
    path = first.database_path
    warm = attemptdb.warm_instance()
    served = warm.attempts
    first.close()
    # closed means detached: checkpointed, no WAL, and the bytes hashed are the final ones
    assert not path.with_name(path.name + ".wal").exists()
    ref = store.file_ref(state_dir, path, kind="tables", format="duckdb", tables={"output": 5})

    second = attempt(state_dir, "run-2", "transform", outputs={"extract": ref})
    con = second.duckdb
    assert attemptdb.warm_instance() is warm and warm.attempts == served + 1   # reused
    # the first attempt's file, its temp table and its catalog are gone from the instance
    assert catalogs(con) == ["memory", "transform-a1"]
    assert con.execute("SELECT current_database()").fetchone() == ("transform-a1",)
    assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (0,)
    table = second.output_table("extract")
    with pytest.raises(duckdb.Error, match="read-only|read only"):   # inputs are read-only
        con.execute(f"INSERT INTO {table} VALUES (99)")
    con.execute(f"CREATE TABLE output AS SELECT id * 2 AS doubled FROM {table}")
    out = second.database_path
    second.close()
    store.verify(state_dir, ref, what="output of stage 'extract'")   # the input is unchanged
    with duckdb.connect(str(out), read_only=True) as check:
        assert check.execute("SELECT sum(doubled) FROM output").fetchone() == (20,)
    assert catalogs(warm.con) == ["memory"]


@pytest.mark.parametrize("leak", [
    "SET default_null_order = 'nulls_first'",   # SET is global in DuckDB: it would leak
    "CREATE TABLE memory.main.kept AS SELECT 1 AS x",
    "CREATE VIEW memory.main.seen AS SELECT 1 AS x",
])
def test_an_attempt_that_changes_the_instance_gets_it_replaced(state_dir, leak):
    default_order = duckdb.connect().execute(
        "SELECT current_setting('default_null_order')").fetchone()
    first = attempt(state_dir, "run-1", "extract")
    first.duckdb.execute(leak)
    warm = attemptdb.warm_instance()
    first.close()
    assert attemptdb.warm_instance() is None and warm.con is not None
    second = attempt(state_dir, "run-2", "extract")
    con = second.duckdb
    assert attemptdb.warm_instance() is not warm
    assert con.execute("SELECT current_setting('default_null_order')").fetchone() == default_order
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'kept'").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'seen'").fetchone() == (0,)
    second.close()


def test_what_a_stage_attached_itself_is_closed_with_the_attempt(state_dir, tmp_path):
    other = tmp_path / "other.duckdb"
    first = attempt(state_dir, "run-1", "extract")
    first.duckdb.execute(f"ATTACH '{other}' AS other")
    first.duckdb.execute("CREATE TABLE other.main.t AS SELECT 7 AS x")
    first.close()
    with duckdb.connect(str(other), read_only=True) as con:   # written and closed
        assert con.execute("SELECT x FROM t").fetchall() == [(7,)]
    assert not other.with_name("other.duckdb.wal").exists()
    second = attempt(state_dir, "run-2", "extract")
    assert catalogs(second.duckdb) == ["extract-a1", "memory"]
    second.close()


def test_two_attempts_open_at_once_in_a_thread_each_get_a_database(state_dir):
    a, b = attempt(state_dir, "run-1", "extract"), attempt(state_dir, "run-2", "extract")
    a.duckdb.execute("CREATE TABLE output AS SELECT 1 AS x")
    b.duckdb.execute("CREATE TABLE output AS SELECT 2 AS x")   # its own instance: no clash
    assert b._attempt_db is None and a._attempt_db is not None
    a.close()
    b.close()
    for ctx, x in ((a, 1), (b, 2)):
        with duckdb.connect(str(ctx.database_path), read_only=True) as con:
            assert con.execute("SELECT x FROM output").fetchall() == [(x,)]


class _Stages:
    def execute_stage(self, stage, context):
        if context.params.get("fail"):
            context.duckdb.execute("CREATE TABLE output AS SELECT range AS id FROM range(3)")
            raise ValueError("the stage failed after writing its table")
        return context.sql("SELECT range AS id FROM range(3)")


def _task(state_dir: Path, run_id: str, **params) -> StageTask:
    return StageTask(run_id=run_id, pipeline_name="p", stage="extract", attempt=1,
                     state_dir=str(state_dir), params=params, upstream={}, input_stages=(),
                     rules={}, config_dir=None, duckdb_settings={})


def test_run_task_records_the_closed_files_hash_and_a_failure_leaves_nothing(state_dir):
    failed = run_task(_Stages(), _task(state_dir, "run-1", fail=True))
    assert not failed.ok and "the stage failed after writing" in failed.error
    assert list((state_dir / "data" / "run-1").iterdir()) == []   # file and WAL removed
    warm = attemptdb.warm_instance()
    assert warm is not None and catalogs(warm.con) == ["memory"]
    served = warm.attempts
    done = run_task(_Stages(), _task(state_dir, "run-2"))
    assert done.ok, done.error
    assert attemptdb.warm_instance() is warm and warm.attempts == served + 1
    path = state_dir / done.output["path"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["extract-a1.duckdb"]   # no WAL
    assert done.output["sha256"] == sha256_file(path) and done.output["tables"] == {"output": 3}
