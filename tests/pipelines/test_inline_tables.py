"""Small tables kept in the event log instead of a DuckDB file per attempt (issue 18, item 2).

Real DuckDB and SQLite files in temp dirs.  Each type written inline comes back
exactly; a run on a small input writes no DuckDB file, gives the same values
as before and reads them back in a later stage, a retry and an export; tables
too big or of another type go to a file as before; an inline output altered in
history.db is found before reuse and its stage runs again.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings, strategies as st

from pipelines import BasePipeline, attemptdb, inlinetables
from pipelines.errors import StageOutputError
from state import EventLog, EventType as T, new_event

from .sample_pipelines import fail_if_flagged

#: one column per type written inline, each with edge values and a NULL
EDGES = {
    "BOOLEAN": ["true", "false"],
    "TINYINT": ["-128", "127"],
    "SMALLINT": ["-32768", "32767"],
    "INTEGER": ["-2147483648", "2147483647"],
    "BIGINT": ["-9223372036854775808", "9223372036854775807"],
    "HUGEINT": ["-170141183460469231731687303715884105728",
                "170141183460469231731687303715884105727"],
    "UTINYINT": ["0", "255"],
    "USMALLINT": ["0", "65535"],
    "UINTEGER": ["0", "4294967295"],
    "UBIGINT": ["0", "18446744073709551615"],
    "UHUGEINT": ["0", "340282366920938463463374607431768211455"],
    "FLOAT": ["'0.1'", "'-3.4028235e38'"],
    "DOUBLE": ["0.1 + 0.2", "'-0.0'", "'nan'", "'-inf'", "'5e-324'", "1.7976931348623157e308"],
    "DECIMAL(38,10)": ["'-9999999999999999999999999999.9999999999'", "'0.0000000001'"],
    "DECIMAL(4,1)": ["'-999.9'", "'0.5'"],
    "VARCHAR": ["'it''s \"quoted\", a\\b; [x] ' || chr(10) || chr(9) || 'é 中 🦘'", "''"],
    "DATE": ["'0001-01-01'", "'9999-12-31'", "'infinity'"],
    "TIME": ["'00:00:00'", "'23:59:59.999999'"],
    "TIMESTAMP": ["'1970-01-01 00:00:00.000001'", "'-infinity'"],
    "TIMESTAMP_S": ["'2024-02-29 12:00:01'", "'1900-01-01 00:00:00'"],
    "TIMESTAMP_MS": ["'2024-02-29 12:00:01.123'", "'1900-01-01 00:00:00'"],
    "TIMESTAMP_NS": ["'2024-02-29 12:00:01.123456789'", "'1900-01-01 00:00:00'"],
    "TIMESTAMP WITH TIME ZONE": ["'2024-06-01 10:00:00+10:00'", "'1999-12-31 23:59:59.5+00'"],
    "INTERVAL": ["INTERVAL '1 month 2 days 3 hours 4.5 seconds'", "INTERVAL '-14 months'"],
    "UUID": ["'00000000-0000-0000-0000-000000000000'",
             "'ffffffff-ffff-ffff-ffff-ffffffffffff'"],
    "BLOB": ["'\\x00\\xFFa\\x5Cb\\x27'::BLOB", "''::BLOB"],
}


def edge_table(con: Any) -> list[str]:
    rows = max(len(v) for v in EDGES.values()) + 1   # and a row of NULLs
    names = [f"c{i}" for i in range(len(EDGES))]
    selects = []
    for r in range(rows):
        cells = []
        for name, (kind, values) in zip(names, EDGES.items()):
            value = values[r] if r < len(values) else "NULL"
            cells.append(f"CAST({value} AS {kind}) AS {name}")
        selects.append("SELECT " + ", ".join(cells))
    con.execute("CREATE TABLE main.output AS " + " UNION ALL ".join(selects))
    return names


def round_trip(con: Any, counts: dict[str, int]) -> dict[str, Any]:
    ref = inlinetables.encode(con, counts)
    assert ref is not None and ref["format"] == "inline"
    ref = json.loads(json.dumps(ref))   # as the event log gives it back
    con.execute("; ".join(inlinetables.attach_statements(ref, "back", what="test output")))
    return ref


def close_warm_since(before: tuple[Any, ...]) -> None:
    """Close the warm DuckDB instances this thread made since ``before`` (warm_instances())."""
    for inst in attemptdb.warm_instances():
        if inst is not None and inst not in before:
            inst.close()


@pytest.fixture
def memory_attempt(tmp_path):
    """An in-memory attempt database on this thread's warm instance with one DuckDB thread,
    as a small attempt gets; closed after the test, with any warm instance it made."""
    before = attemptdb.warm_instances()
    db = attemptdb.open_attempt(tmp_path / "a.duckdb", {"threads": 1}, in_memory=True)
    try:
        yield db
    finally:
        db.close()
        close_warm_since(before)


def test_each_type_written_inline_comes_back_exactly():
    con = duckdb.connect()
    names = edge_table(con)
    rows = con.execute("SELECT count(*) FROM output").fetchone()[0]
    ref = round_trip(con, {"output": rows})
    types = lambda db: [str(t) for t in con.table(f"{db}.main.output").types]  # noqa: E731
    assert types("back") == types("memory") == list(EDGES)
    for a, b in (("memory", "back"), ("back", "memory")):   # NULLs and NaN compare equal here
        assert con.execute(f"SELECT count(*) FROM (FROM {a}.main.output EXCEPT ALL "
                           f"FROM {b}.main.output)").fetchone()[0] == 0
    # what EXCEPT does not tell: the order of the rows, the sign of zero, the bytes of a blob
    cols = ", ".join(f"{n}::VARCHAR" for n in names)
    order = lambda db: con.execute(f"SELECT {cols} FROM {db}.main.output").fetchall()  # noqa: E731
    assert order("back") == order("memory")
    zero = list(EDGES).index("DOUBLE")
    signs = con.execute(f"SELECT c{zero} FROM back.main.output").fetchall()
    assert math.copysign(1, signs[1][0]) == -1
    assert ref["tables"] == {"output": rows}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=False), st.text(max_size=12)), max_size=20))
def test_doubles_and_text_come_back_exactly(rows):
    con = duckdb.connect()
    con.execute("CREATE TABLE main.output (x DOUBLE, s VARCHAR)")
    if rows:
        con.executemany("INSERT INTO main.output VALUES (?, ?)", rows)
    round_trip(con, {"output": len(rows)})
    back = con.execute("SELECT x, s FROM back.main.output").fetchall()
    assert [(math.copysign(1, x), x, s) for x, s in back] == \
        [(math.copysign(1, x), x, s) for x, s in rows]


def test_an_altered_inline_table_is_refused_saying_what_to_do(tmp_path):
    con = duckdb.connect()
    con.execute("CREATE TABLE main.output AS SELECT range AS x FROM range(3)")
    ref = inlinetables.encode(con, {"output": 3})
    altered = json.loads(json.dumps(ref).replace('\\"2\\"', '\\"9\\"'))
    assert altered != ref
    for read in (lambda: inlinetables.attach_statements(altered, "x", what="output of stage "
                                                        "'extract' read by run r1"),
                 lambda: inlinetables.materialise(altered, tmp_path / "x.duckdb",
                                                  what="output of stage 'extract' of run r1")):
        with pytest.raises(StageOutputError) as err:
            read()
        message = str(err.value)
        assert "output of stage 'extract'" in message and "history.db" in message
        assert "`ahgd retry RUN_ID`" in message and "running its pipeline again" in message
    assert not (tmp_path / "x.duckdb").exists()   # nothing written from altered text


def test_too_big_or_another_type_is_not_written_inline():
    con = duckdb.connect()
    con.execute("CREATE TABLE main.output AS SELECT range AS id FROM range(5000)")
    assert inlinetables.encode(con, {"output": 5000}) is None   # over the limit, not encoded
    con.execute("CREATE TABLE main.nested AS SELECT [1, 2] AS xs")
    assert inlinetables.encode(con, {"nested": 1}) is None
    con.execute("CREATE TABLE main.small AS SELECT 1 AS x")
    assert inlinetables.encode(con, {"small": 1}, limit=0) is None


# ----------------------------------------------------------------------------- runs


def write_csv(path: Path, rows: int) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "value", "label"])
        for i in range(rows):
            w.writerow([i, i * 1.5, f"row {i}, 'quoted'"])
    return path


class Small(BasePipeline):
    """extract (CSV) -> transform -> check (passes through) -> load; with ``fan_out`` the
    transform makes 5,000 rows (too many to keep inline); with ``nested`` a LIST column.
    ``<state>/fail-<stage>`` makes that stage fail once."""

    fan_out = False
    nested = False

    def define_stages(self) -> list[str]:
        return ["extract", "transform", "check", "load"]

    def execute_stage(self, stage: str, context: Any) -> Any:
        fail_if_flagged(context, stage)
        if stage == "extract":
            return context.sql("SELECT * FROM read_csv(?, header = true)",
                               [str(context.input_file)])
        if stage == "transform":
            more = ", range(2500)" if self.fan_out else ""
            extra = ", [id, id] AS pair" if self.nested else ""
            return context.sql(f"SELECT id, value * 2 AS doubled, upper(label) AS label{extra} "
                               f"FROM {context.output_table('extract')}{more} ORDER BY id")
        if stage == "check":
            return context.passthrough("transform")
        return context.sql(f"SELECT count(*) AS n, sum(doubled) AS total, "
                           f"string_agg(label, '|' ORDER BY id) AS labels "
                           f"FROM {context.output_table('check')}")


def expected(source: Path, times: int = 1) -> tuple:
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    total = sum(float(r["value"]) * 2 for r in rows) * times
    labels = "|".join(r["label"].upper() for r in rows for _ in range(times))
    return (len(rows) * times, total, labels)


def refs(state: Path, run_id: str) -> dict[str, dict]:
    with EventLog.open(state) as log:
        return {s: a.output for s, a in log.run(run_id).attempts.items()}


def duckdb_files(state: Path) -> list[str]:
    return sorted(p.name for p in (state / "data").rglob("*.duckdb")) \
        if (state / "data").exists() else []


@pytest.mark.parametrize("executor", ["inprocess", "process"])
def test_a_small_run_keeps_its_tables_in_the_log(state_dir, tmp_path, executor):
    source = write_csv(tmp_path / "small.csv", 20)
    p = Small("small", state_dir=state_dir, executor=executor, max_retries=0)
    try:
        ctx = p.run(input_file=source)
        assert ctx.state == "COMPLETED", ctx.error
        assert ctx.get_output("load").fetchall()[0] == expected(source)
        assert duckdb_files(state_dir) == []   # not one DuckDB file written
        assert not (state_dir / "data" / ctx.run_id).exists()   # nor a folder made for one
        out = refs(state_dir, ctx.run_id)
        assert {s: r["format"] for s, r in out.items()} == dict.fromkeys(
            ["extract", "transform", "check", "load"], "inline")
        assert out["check"] == out["transform"]   # a passthrough shares its input's record
        assert out["extract"]["tables"] == {"output": 20}
        # a reader that needs a file (a loader's warehouse(), ahgd export) gets one
        path = ctx.output_path("transform")
        con = duckdb.connect(str(path), read_only=True)
        assert con.execute("SELECT count(*), sum(doubled) FROM output").fetchone() == \
            expected(source)[:2]
        con.close()
    finally:
        p.close()
    with EventLog.open(state_dir) as log:
        assert log.check().ok


class Counted(Small):
    """Small, noting what the thread's warm DuckDB instance has done when load starts."""

    seen: list[tuple] = []

    def execute_stage(self, stage: str, context: Any) -> Any:
        if stage == "load":
            inst = attemptdb.warm_instance()
            self.seen.append((inst.attempts, inst.listings, inst.settings_compared))
            threads = context.duckdb.execute("SELECT current_setting('threads')").fetchone()[0]
            self.seen.append(("threads", threads))
        return super().execute_stage(stage, context)


def test_an_inline_attempt_needs_no_listing_of_its_databases(state_dir, tmp_path):
    source = write_csv(tmp_path / "small.csv", 20)
    p = Counted("small", state_dir=state_dir, executor="inprocess", max_retries=0)
    p.seen = []
    try:
        assert p.run(input_file=source).state == "COMPLETED"
    finally:
        p.close()
    # extract and transform served by one instance, each found as made from its query log
    # alone: the inline input's ATTACH and CREATE TABLE are known to the attempt
    assert p.seen == [(2, 0, 0), ("threads", 1)]   # small data: one DuckDB thread


def test_small_and_other_attempts_alternate_between_two_warm_instances(tmp_path):
    """A run's small attempts (one DuckDB thread) and its others (DuckDB's default) each keep
    an instance warm: alternating costs no new instance (~20 ms each)."""
    def attempt(name: str, small: bool) -> Any:
        config = {"threads": 1} if small else {}
        db = attemptdb.open_attempt(tmp_path / f"{name}.duckdb", config, in_memory=small)
        inst = attemptdb.warm_instance()
        threads = db.con.execute("SELECT current_setting('threads')").fetchone()[0]
        db.con.execute("CREATE TABLE main.output AS SELECT 1 AS x")
        db.close()
        return inst, threads

    first, spare = attemptdb.warm_instances()
    try:
        small, one = attempt("a", True)
        other, default = attempt("b", False)
        again, _ = attempt("c", True)
        assert again is small and one == 1
        assert default != 1 or os.cpu_count() == 1   # DuckDB's default: the machine's cores
        assert attempt("d", False)[0] is other   # each reused, none closed
        assert attemptdb.warm_instances() == (other, small)
        assert (small.attempts, other.attempts) == (2, 2)
        assert not (tmp_path / "a.duckdb").exists() and (tmp_path / "b.duckdb").exists()
    finally:
        close_warm_since((first, spare))


@pytest.mark.parametrize("why", ["too_big", "nested", "big_input"])
def test_tables_that_do_not_fit_inline_go_to_a_file(state_dir, tmp_path, why, monkeypatch):
    source = write_csv(tmp_path / "small.csv", 20 if why != "big_input" else 40)
    if why == "big_input":
        monkeypatch.setattr(inlinetables, "SMALL_INPUT_BYTES", source.stat().st_size - 1)
    p = Small("small", state_dir=state_dir, executor="inprocess", max_retries=0)
    p.fan_out, p.nested = why == "too_big", why == "nested"
    try:
        ctx = p.run(input_file=source)
        assert ctx.state == "COMPLETED", ctx.error
        assert ctx.get_output("load").fetchall()[0] == expected(source, 2500 if p.fan_out else 1)
    finally:
        p.close()
    out = refs(state_dir, ctx.run_id)
    formats = {s: r["format"] for s, r in out.items()}
    # the extract is small (inline) unless the input file is not; what the transform made
    # goes to its file, recorded with its checksum; a load of one row from it is in a file too
    assert formats == {"extract": "duckdb" if why == "big_input" else "inline",
                       "transform": "duckdb", "check": "duckdb", "load": "duckdb"}
    f = state_dir / out["transform"]["path"]
    from state.digest import sha256_file

    assert sha256_file(f) == out["transform"]["sha256"]
    assert out["transform"]["tables"] == {"output": expected(source, 2500 if p.fan_out else 1)[0]}


def test_an_inline_output_altered_in_the_log_is_made_again_on_retry(state_dir, tmp_path):
    source = write_csv(tmp_path / "small.csv", 20)
    p = Small("small", state_dir=state_dir, executor="inprocess", max_retries=0)
    try:
        (state_dir / "fail-load").write_text("")
        first = p.run(input_file=source)
        assert (first.state, first.failed_stage) == ("FAILED", "load")
        recorded = refs(state_dir, first.run_id)["transform"]
        # as a bad disk or a hand edit would: past the append-only trigger, both copies (the
        # event and its projection), so that the log stays consistent
        db = sqlite3.connect(state_dir / "history.db")
        with db:
            sql = {n: q for n, q in db.execute("SELECT name, sql FROM sqlite_master WHERE "
                                              "type = 'trigger' AND tbl_name = 'events'")}
            for name in sql:
                db.execute(f"DROP TRIGGER {name}")
            for table, column in (("events", "payload"), ("stage_runs", "detail")):
                db.execute(f"UPDATE {table} SET {column} = replace({column}, 'ROW 3,', "
                           f"'ROW 9,') WHERE run_id = ?", [first.run_id])
            for q in sql.values():
                db.execute(q)
        db.close()
        log = p._open_log()
        log.append(new_event(T.RUN_RETRIED, first.run_id, previous_state="FAILED"))
        ctx = p.execute_run(first.run_id)
        assert ctx.state == "COMPLETED", ctx.error
        assert ctx.get_output("load").fetchall()[0] == expected(source)   # not the altered rows
    finally:
        p.close()
    with EventLog.open(state_dir) as log:
        inv = [e.payload for e in log.events(run_id=first.run_id)
               if e.type == T.STAGE_INVALIDATED]
        assert log.check().ok
    assert [i["path"] for i in inv] == [f"inline:{recorded['sha256']}"] * 2   # and the check
    assert "kept in the event log" in inv[0]["error"] and "history.db" in inv[0]["error"]
    assert inv[0]["expected"] == {"sha256": recorded["sha256"]}


def test_ahgd_export_writes_an_inline_output_out(state_dir, tmp_path):
    from ahgd_daemon import exports
    from state import ops_queries

    source = write_csv(tmp_path / "small.csv", 20)
    p = Small("small", state_dir=state_dir, executor="inprocess", max_retries=0)
    try:
        ctx = p.run(input_file=source)
    finally:
        p.close()
    with EventLog.open(state_dir) as log:
        run = ops_queries.run_in_full(log, ctx.run_id)
    path = exports.stage_output_file(state_dir, run, "extract")
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*), min(label) FROM output").fetchone() == (20, "row 0, 'quoted'")
    con.close()


def test_inline_tables_false_keeps_every_table_in_a_file(state_dir, tmp_path):
    source = write_csv(tmp_path / "small.csv", 20)
    p = Small("small", state_dir=state_dir, executor="inprocess", max_retries=0,
              duckdb_settings={"inline_tables": False})   # YAML: duckdb: {inline_tables: false}
    try:
        ctx = p.run(input_file=source)
        assert ctx.state == "COMPLETED", ctx.error
        assert ctx.get_output("load").fetchall()[0] == expected(source)
    finally:
        p.close()
    assert {s: r["format"] for s, r in refs(state_dir, ctx.run_id).items()} == dict.fromkeys(
        ["extract", "transform", "check", "load"], "duckdb")
    assert duckdb_files(state_dir) == ["extract-a1.duckdb", "load-a1.duckdb", "transform-a1.duckdb"]


@pytest.mark.parametrize("rows,rowid_column", [(20, False), (20, True), (5000, False)])
def test_the_text_read_before_the_row_count_is_the_same_as_read_alone(memory_attempt, rows,
                                                                     rowid_column):
    """store_output reads the one output table's text before the query log counts its rows
    (bounded to the rows that could fit): the reference is the one encode makes alone."""
    db = memory_attempt
    own = "range AS rowid, " if rowid_column else ""
    db.con.execute(f'CREATE TABLE "main"."output" AS SELECT {own}range * 7 AS x, '
                   f"'r' || range AS label FROM range({rows}) ORDER BY range DESC")
    early = inlinetables.prefetch(db.con)
    counts = db.row_counts(["output"], True)
    assert counts == {"output": rows}
    together = inlinetables.encode(db.con, counts, known={"output": early})
    alone = inlinetables.encode(db.con, counts)
    assert together == alone
    assert (together is None) == (rows == 5000)
    if together is not None:   # in the table's order, not sorted
        assert json.loads(together["data"]["output"]["rows"])[0][-2:] == [str(7 * (rows - 1)), f"r{rows - 1}"]


class Shapes(BasePipeline):
    """Records (a list of dicts) and an empty table, each inline, read back by a later stage."""

    def define_stages(self) -> list[str]:
        return ["records", "empty", "check"]

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        return {"records", "empty"} if stage_name == "check" else set()

    def execute_stage(self, stage: str, context: Any) -> Any:
        if stage == "records":
            return [{"code": "101021007", "name": "Braidwood", "irsd": 1024.5},
                    {"code": "101021008", "name": "Karabar", "irsd": None}]
        if stage == "empty":
            return context.sql("SELECT 1::INTEGER AS a, 'x' AS b WHERE false")
        records = context.get_output("records")
        empty = context.get_output("empty")
        return {"records": records, "empty": [empty.columns, [str(t) for t in empty.types],
                                              len(empty.fetchall())]}


def test_records_and_an_empty_table_come_back_from_inline(state_dir, tmp_path):
    source = write_csv(tmp_path / "small.csv", 3)   # a small run input: its stages in memory
    p = Shapes("shapes", state_dir=state_dir, executor="inprocess", max_retries=0)
    try:
        ctx = p.run(input_file=source)
        assert ctx.state == "COMPLETED", ctx.error
        seen = ctx.get_output("check")
    finally:
        p.close()
    assert seen["records"] == [{"code": "101021007", "name": "Braidwood", "irsd": 1024.5},
                               {"code": "101021008", "name": "Karabar", "irsd": None}]
    assert seen["empty"] == [["a", "b"], ["INTEGER", "VARCHAR"], 0]
    out = refs(state_dir, ctx.run_id)
    assert (out["records"]["format"], out["records"]["shape"]) == ("inline", "records")
    assert (out["empty"]["format"], out["empty"]["tables"]) == ("inline", {"output": 0})


def test_a_text_that_does_not_hold_every_counted_row_is_never_kept(memory_attempt):
    """The inline text must hold exactly the rows counted: a prefetch bounded below the table's
    rows (or read before rows were added) sends the table to a file instead of cutting it."""
    db = memory_attempt
    db.con.execute('CREATE TABLE "main"."output" AS SELECT range AS x FROM range(5)')
    early = inlinetables.prefetch(db.con)
    assert early.rows == 5 and json.loads(early.text) == [[str(i)] for i in range(5)]
    db.con.execute('INSERT INTO "main"."output" VALUES (5)')   # a row the text lacks
    assert inlinetables.encode(db.con, {"output": 6}, known={"output": early}) is None
    whole = inlinetables.encode(db.con, {"output": 6})
    assert json.loads(whole["data"]["output"]["rows"]) == [[str(i)] for i in range(6)]


@pytest.mark.parametrize("column", ["plain", "memory"])
def test_the_text_read_is_not_taken_for_a_change_to_the_instance(memory_attempt, tmp_path,
                                                                column):
    """The statement reading an output's text is in the query log like the stage's own; a
    column named ``memory`` in it made the log look like a change to the instance: the
    tables were listed and every setting compared (~6 ms) after each such attempt."""
    db = memory_attempt
    csv = tmp_path / "in.csv"
    csv.write_text(f"{column},x\n1,2\n3,4\n")
    inst = db._instance
    listings, compared = inst.listings, inst.settings_compared
    db.con.execute('CREATE TABLE "main"."output" AS SELECT * FROM read_csv(?)', [str(csv)])
    early = inlinetables.prefetch(db.con, read=db.read)
    assert db.row_counts(["output"], True) == {"output": 2}
    assert json.loads(early.text) == [["1", "2"], ["3", "4"]]
    db.close()
    assert (inst.listings - listings, inst.settings_compared - compared) == (0, 0)
