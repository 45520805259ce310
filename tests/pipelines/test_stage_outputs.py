"""What a stage returns and what the next stage gets: lists of dicts are tables, and
``get_output`` keeps one shape whatever the data (issue 13, items 8 and 9)."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from state import EventLog

from .output_pipelines import RECORDS, QuarantinePipeline, RecordsPipeline

RULES = {"required_columns": ["sa2_code", "deaths"], "min_records": 3, "not_null": ["sa2_code"],
         "unique": ["sa2_code"], "ranges": {"deaths": [0, 100]}}


@pytest.mark.parametrize("executor", ["inprocess", "process"])
def test_a_list_of_dicts_is_validated_stored_as_a_table_and_read_back(state_dir, executor):
    ctx = RecordsPipeline(state_dir=state_dir, rows=RECORDS, rules=RULES, executor=executor).run()
    assert ctx.state == "COMPLETED", ctx.error
    result = ctx.stage_results["extract"]
    assert (result.output["kind"], result.output["shape"], result.rows) == ("tables", "records", 3)
    # stored as a real table in the attempt's DuckDB file, a column per key, one type each
    with duckdb.connect(str(state_dir / result.output["path"]), read_only=True) as con:
        assert con.execute("SELECT sa2_code, year, deaths, rate, day, note FROM output "
                           "ORDER BY sa2_code").fetchall() == [
            ("101021007", 2021, 3, 1.2, dt.date(2021, 6, 30), None),
            ("101021008", 2021, 5, 1.25, dt.date(2021, 6, 30), None),
            ("101021009", 2022, None, 2.0, dt.date(2022, 6, 30), "late")]
    # the next stage read it both ways: the records again in Python, a table in SQL
    use = ctx.get_output("use")
    assert use["python"] == "list" and use["kind"] == "tables" and use["sql"] == [3, 3]
    assert use["types"] == {"sa2_code": "VARCHAR", "year": "BIGINT", "deaths": "BIGINT",
                            "rate": "DOUBLE", "day": "DATE", "note": "VARCHAR"}
    assert ctx.get_output("extract") == [{**r, "note": r.get("note")} for r in RECORDS]


def test_the_rules_of_a_list_of_dicts_fail_the_stage_naming_rule_and_rows(state_dir):
    rows = RECORDS + [{"sa2_code": "101021010", "deaths": 400}]
    ctx = RecordsPipeline(state_dir=state_dir, rows=rows, rules=RULES, executor="inprocess").run()
    assert ctx.state == "FAILED" and ctx.failed_stage == "extract"
    assert "stage 'extract': ranges: 1 row has deaths outside [0, 100]" in ctx.error
    assert "'sa2_code': '101021010'" in ctx.error


def test_records_without_rules_are_a_table_too_and_a_dict_of_columns_needs_rules(state_dir):
    ctx = RecordsPipeline(state_dir=state_dir, rows=RECORDS, executor="inprocess").run()
    assert ctx.get_output("use")["kind"] == "tables"
    columns = {"sa2_code": ["101021007", "101021008", "101021009"], "deaths": [3, 5, 7]}
    plain = RecordsPipeline(state_dir=state_dir, rows=columns, executor="inprocess").run()
    assert plain.get_output("use") == {"python": "dict", "kind": "value"}
    checked = RecordsPipeline(state_dir=state_dir, rows=columns, rules=RULES,
                              executor="inprocess").run()
    assert checked.state == "COMPLETED", checked.error
    assert checked.get_output("use")["kind"] == "tables"
    assert checked.get_output("extract") == columns          # the same shape back: columns


@pytest.mark.parametrize("rows, message", [
    ([{"sa2_code": "101021007"}, {"sa2_code": 101021008}],
     "stage 'extract' returned records whose column 'sa2_code' mixes kinds of value: "
     "'101021007' (str) in row 1, 101021008 (int) in row 2; give each column one kind"),
    ([{"flag": True}, {"flag": 1}],
     "column 'flag' mixes kinds of value: True (bool) in row 1, 1 (int) in row 2"),
    ([{"a": 1, "A": 2}], "returned records with the keys 'a' and 'A', which DuckDB takes for "
                         "one column"),
    ([{"x": object()}], "returned records that DuckDB cannot store as a table (column 'x')"),
])
def test_records_that_are_not_a_table_fail_saying_which_column(state_dir, rows, message):
    ctx = RecordsPipeline(state_dir=state_dir, rows=rows, executor="inprocess").run()
    assert ctx.state == "FAILED"
    assert message in ctx.error
    assert "StageOutputError" in ctx.error


def test_no_records_with_rules_is_a_validation_failure_that_says_so(state_dir):
    ctx = RecordsPipeline(state_dir=state_dir, rows=[], rules=RULES, executor="inprocess").run()
    assert ctx.state == "FAILED"
    assert ("stage 'extract' returned no records (an empty list), so there is no table to check "
            "its validation rules against") in ctx.error
    without = RecordsPipeline(state_dir=state_dir, rows=[], executor="inprocess").run()
    assert without.get_output("extract") == []


@pytest.mark.parametrize("executor", ["inprocess", "process"])
def test_get_output_of_a_quarantining_stage_has_one_shape_with_and_without_rejects(
        state_dir, executor):
    clean = QuarantinePipeline(state_dir=state_dir, executor=executor).run(
        params={"deciles": [1, 5, 10]})
    dirty = QuarantinePipeline(state_dir=state_dir, executor=executor).run(
        params={"deciles": [1, 11, 10, 0]})
    assert (clean.state, dirty.state) == ("COMPLETED", "COMPLETED"), (clean.error, dirty.error)
    # inside the run: the next stage got a relation both times
    assert clean.get_output("use") == {"python": "DuckDBPyRelation", "good": [
        "101021000", "101021001", "101021002"], "rejected": []}
    seen = dirty.get_output("use")
    assert seen["python"] == "DuckDBPyRelation"
    assert seen["good"] == ["101021000", "101021002"]
    assert [r[:2] for r in seen["rejected"]] == [("101021001", 11), ("101021003", 0)]
    assert {r[2] for r in seen["rejected"]} == {"ranges:decile"}
    # after the run: the same shape from the returned contexts, rejected rows by name
    assert type(clean.get_output("validate")) is type(dirty.get_output("validate"))
    assert len(dirty.get_output("validate").fetchall()) == 2
    assert clean.get_output("validate", table="validate_rejected").fetchall() == []
    assert len(dirty.get_output("validate", table="validate_rejected").fetchall()) == 2
    with EventLog.open(state_dir) as log:
        refs = log.query("SELECT json_extract(output, '$.rejected_table'), "
                         "json_extract(output, '$.tables.validate_rejected') FROM stage_runs "
                         "WHERE stage = 'validate' ORDER BY started_at")
    assert [tuple(r) for r in refs] == [("validate_rejected", 0), ("validate_rejected", 2)]
