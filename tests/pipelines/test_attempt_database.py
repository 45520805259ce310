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


LEAKS = {   # a setting changed by each way a stage may change one: all caught
    "SET": ["SET default_null_order = 'nulls_first'"],
    "PRAGMA": ["PRAGMA default_null_order = 'nulls_first'"],
    "among other statements": ["SELECT 1; SET default_null_order = 'nulls_first'; SELECT 2"],
    "the log turned off first": ["SELECT * FROM disable_logging()",
                                 "SET default_null_order = 'nulls_first'"],
    "the log emptied after": ["SET default_null_order = 'nulls_first'",
                              "CALL truncate_duckdb_logs()"],
    "a table in the memory catalog": ["USE memory", "CREATE TABLE kept AS SELECT 1 AS x"],
}


def test_settings_are_compared_only_after_a_statement_that_may_change_one(state_dir):
    """Reading DuckDB's ~170 settings costs ~6 ms an attempt: the instance's query log says
    when it is needed (issue 18 item 2); a plain attempt reads none, and a setting changed
    by any way (SET, PRAGMA, amid other statements, the log turned off or emptied) still
    gets the instance replaced, as does a table left in its ``memory`` catalog."""
    default_order = duckdb.connect().execute(
        "SELECT current_setting('default_null_order')").fetchone()

    def plain(run_id: str):
        ctx = attempt(state_dir, run_id, "extract")
        ctx.duckdb.execute("CREATE TABLE output AS SELECT range AS id FROM range(5)")
        assert ctx.sql("SELECT count(*) FROM output").fetchall() == [(5,)]
        warm = attemptdb.warm_instance()
        ctx.close()
        return warm

    warm = plain("run-0")
    compared = warm.settings_compared
    for i in range(1, 4):
        assert plain(f"run-{i}") is warm
    assert attemptdb.warm_instance() is warm and warm.settings_compared == compared

    for n, (how, statements) in enumerate(LEAKS.items()):
        ctx = attempt(state_dir, f"leak-{n}", "extract")
        for sql in statements:
            ctx.duckdb.execute(sql)
        leaky = attemptdb.warm_instance()
        ctx.close()
        assert attemptdb.warm_instance() is None, how      # closed: the next one is fresh
        fresh = plain(f"after-{n}")
        assert fresh is not leaky, how
        check = attempt(state_dir, f"check-{n}", "extract")
        assert check.duckdb.execute("SELECT current_setting('default_null_order')"
                                    ).fetchone() == default_order, how
        assert check.duckdb.execute("SELECT count(*) FROM duckdb_tables() "
                                    "WHERE database_name = 'memory'").fetchone() == (0,), how
        check.close()
        assert attemptdb.warm_instance() is fresh, how     # and it is reused again


class _Returns:
    """Relations of the attempt's own connection: stored by one CREATE TABLE AS their query,
    or (a table the stage made itself under the name) the long way."""

    def execute_stage(self, stage, context):
        if context.params.get("own"):
            context.duckdb.execute("CREATE TABLE output AS SELECT range AS id FROM range(4)")
            return context.duckdb.table("output")
        return context.sql("SELECT * FROM read_csv(?, header = true)", params=[context.params["csv"]])


def test_a_relation_is_stored_by_its_own_query_or_over_the_stages_own_table(state_dir, tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("id,label\n1,a\n2,b\n3,c\n")
    for run_id, params, rows in (("run-csv", {"csv": str(csv)}, [(1, "a"), (2, "b"), (3, "c")]),
                                 ("run-own", {"own": True}, [(0,), (1,), (2,), (3,)])):
        done = run_task(_Returns(), _task(state_dir, run_id, **params))
        assert done.ok, done.error
        assert done.output["tables"] == {"output": len(rows)}
        path = state_dir / done.output["path"]
        assert done.output["sha256"] == sha256_file(path)
        with duckdb.connect(str(path), read_only=True) as con:
            assert con.execute("SELECT * FROM output ORDER BY 1").fetchall() == rows


class _Reads:
    """A stage reading its input (``extract``) in each way that matters to what the attempt
    holds when it closes: nothing else (the query log tells it all), or a table, database or
    detach of its own (the log cannot: listed)."""

    def execute_stage(self, stage, context):
        how = context.params["how"]
        table = context.output_table("extract")
        con = context.duckdb
        if how == "extra table":
            con.execute(f"CREATE TABLE extra AS SELECT * FROM {table} WHERE id < 2")
        elif how == "table dropped":
            con.execute("CREATE TABLE scratch AS SELECT 1 AS x")
            con.execute("DROP TABLE scratch")
        elif how == "renamed":
            con.execute(f"CREATE TABLE first AS SELECT * FROM {table}")
            con.execute("ALTER TABLE first RENAME TO kept")
        elif how == "own database":
            con.execute(f"ATTACH '{context.params['other']}' AS other")
        elif how == "input detached":
            rows = con.execute(f"SELECT * FROM {table}").fetchall()
            con.execute('DETACH "extract"')
            return context.sql(f"SELECT unnest({[r[0] for r in rows]}) AS id")
        return context.sql(f"SELECT id * 2 AS doubled FROM {table}")


def test_an_attempts_tables_and_databases_come_from_its_query_log_when_it_tells(state_dir,
                                                                              tmp_path):
    """Listing the databases attached, and the tables an attempt made, cost a round trip each
    (~0.7 ms of CPU): an attempt whose query log shows only reads and the output made lists
    neither (issue 18 item 2); one that made, dropped or renamed a table, attached a database
    or detached its input is listed as before, and every table is recorded with its rows."""
    source = run_task(_Stages(), _task(state_dir, "run-0"))
    assert source.ok, source.error

    def read(run_id: str, how: str):
        task = _task(state_dir, run_id, how=how, other=str(tmp_path / f"{run_id}.duckdb"))
        task.stage, task.upstream, task.input_stages = "transform", {"extract": source.output}, ("extract",)
        warm = attemptdb.warm_instance()
        listed = warm.listings
        done = run_task(_Reads(), task)
        assert done.ok, done.error
        assert attemptdb.warm_instance() is warm and catalogs(warm.con) == ["memory"]
        assert done.output["sha256"] == sha256_file(state_dir / done.output["path"])
        return done.output["tables"], warm.listings - listed

    assert read("run-1", "plain") == ({"output": 3}, 0)
    assert read("run-2", "extra table") == ({"extra": 2, "output": 3}, 1)
    assert read("run-3", "table dropped") == ({"output": 3}, 1)
    assert read("run-4", "renamed") == ({"kept": 3, "output": 3}, 1)
    assert read("run-5", "own database")[0] == {"output": 3}
    assert read("run-6", "input detached")[0] == {"output": 3}
    assert read("run-7", "plain") == ({"output": 3}, 0)
    store.verify(state_dir, source.output, what="output of stage 'extract'")   # read-only
