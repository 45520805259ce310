"""Validation rules run as SQL against real DuckDB files: every rule passes and fails."""

from __future__ import annotations

import json
from datetime import date

import duckdb
import pytest

from pipelines.errors import ConfigError, StageOutputError, ValidationFailed
from pipelines.validation import (RuleFailure, ValidationReport, check_rules, enforce,
                                  validate_table)

COLUMNS = "sa2_code, sa2_name, state, year, irsd_decile, \"my col\", select"
ROWS = [
    ("101021007", "Braidwood", "NSW", 2021, 3, 1.5, "a"),
    ("101021008", "Karabar", "NSW", 2021, 7, 2.0, "b"),
    ("201011001", "Alfredton", "VIC", 2021, 9, 2.5, "c"),
    ("201011001", "Alfredton", "VIC", 2016, 8, 3.0, "d"),
]


@pytest.fixture
def con(tmp_path):
    """A DuckDB database file of its own for each test."""
    connection = duckdb.connect(str(tmp_path / "stage.duckdb"))
    yield connection
    connection.close()


def make_irsd(con, rows=ROWS, name="irsd"):
    con.execute(f'CREATE OR REPLACE TABLE {name} (sa2_code VARCHAR, sa2_name VARCHAR, '
                'state VARCHAR, year INTEGER, irsd_decile INTEGER, "my col" DOUBLE, '
                '"select" VARCHAR)')
    con.executemany(f"INSERT INTO {name} VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


@pytest.fixture
def irsd(con):
    """The good IRSD table every rule passes on; tests add bad rows to it."""
    make_irsd(con)
    return con


def add_rows(con, *rows, table="irsd"):
    con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def check(con, rules, stage="validate", table="irsd", **kw) -> ValidationReport:
    return validate_table(con, table, rules, stage=stage, **kw)


def row(code, name, state, year, decile, my, sel):
    return {"sa2_code": code, "sa2_name": name, "state": state, "year": year,
            "irsd_decile": decile, "my col": my, "select": sel}


def only_failure(report: ValidationReport) -> RuleFailure:
    assert not report.passed
    assert len(report.failures) == 1, [f.message for f in report.failures]
    return report.failures[0]


# ---------------------------------------------------------------- table-level rules

def test_required_columns_pass(irsd):
    report = check(irsd, {"required_columns": ["sa2_code", "irsd_decile", "SELECT"]})
    assert report == ValidationReport("validate", "stage.main.irsd", 4, True, [])


def test_required_columns_fail(irsd):
    failure = only_failure(check(irsd, {"required_columns": ["sa2_code", "irsd_score", "seifa"]},
                                 stage="extract"))
    assert failure.message == (
        "stage 'extract': required_columns: missing column(s) irsd_score, seifa (the output has: "
        'sa2_code, sa2_name, state, year, irsd_decile, "my col", select)')
    assert (failure.rule, failure.column, failure.count) == ("required_columns",
                                                            "irsd_score, seifa", 4)


def test_required_column_missing_is_not_also_a_config_error_in_other_rules(irsd):
    report = check(irsd, {"required_columns": ["irsd_score"], "not_null": ["irsd_score"]})
    assert [f.rule for f in report.failures] == ["required_columns"]


def test_min_and_max_records_pass(irsd):
    assert check(irsd, {"min_records": 4, "max_records": 4}).passed


def test_min_records_fail(irsd):
    failure = only_failure(check(irsd, {"min_records": 1000}, stage="extract"))
    assert failure.message == "stage 'extract': min_records: 4 rows, at least 1000 required"
    assert (failure.rule, failure.column, failure.count) == ("min_records", None, 4)


def test_min_records_fail_on_one_row(con):
    make_irsd(con, ROWS[:1])
    assert only_failure(check(con, {"min_records": 2})).message == (
        "stage 'validate': min_records: 1 row, at least 2 required")


def test_max_records_fail(irsd):
    assert only_failure(check(irsd, {"max_records": 3})).message == (
        "stage 'validate': max_records: 4 rows, at most 3 allowed")


# ---------------------------------------------------------------- row-level rules

def test_not_null_pass_and_fail(irsd):
    assert check(irsd, {"not_null": ["sa2_code", "my col"]}).passed
    add_rows(irsd, (None, "Nowhere", "NSW", 2021, 5, 1.0, "e"),
             (None, "Elsewhere", "VIC", 2021, 6, None, "f"))
    report = check(irsd, {"not_null": ["sa2_code", "my col"]})
    assert [(f.rule, f.column, f.count) for f in report.failures] == [
        ("not_null", "sa2_code", 2), ("not_null", "my col", 1)]
    assert report.failures[0].examples == [row(None, "Nowhere", "NSW", 2021, 5, 1.0, "e"),
                                           row(None, "Elsewhere", "VIC", 2021, 6, None, "f")]
    assert report.failures[1].message == (
        "stage 'validate': not_null: 1 row has NULL in \"my col\"; e.g. {'my col': None, "
        "'sa2_code': None, 'sa2_name': 'Elsewhere', 'state': 'VIC', 'year': 2021, "
        "'irsd_decile': 6, 'select': 'f'}")


def test_unique_single_column_fail_lists_the_repeats(irsd):
    failure = only_failure(check(irsd, {"unique": ["sa2_code"]}))
    assert failure.message == (
        "stage 'validate': unique: 1 row duplicates an earlier row's sa2_code; e.g. "
        "{'sa2_code': '201011001', 'sa2_name': 'Alfredton', 'state': 'VIC', 'year': 2016, "
        "'irsd_decile': 8, 'my col': 3.0, 'select': 'd'}")
    assert failure.examples == [row(*ROWS[3])]


def test_unique_composite_key_pass_and_fail(irsd):
    assert check(irsd, {"unique": [["sa2_code", "year"], "select"]}).passed
    add_rows(irsd, ("201011001", "Alfredton again", "VIC", 2016, 8, 3.5, "e"),
             ("201011001", "Alfredton thrice", "VIC", 2016, 8, 4.0, "f"))
    failure = only_failure(check(irsd, {"unique": [["sa2_code", "year"], "select"]}))
    assert (failure.rule, failure.column, failure.count) == ("unique", "sa2_code, year", 2)
    assert failure.message.startswith(
        "stage 'validate': unique: 2 rows duplicate an earlier row's (sa2_code, year); e.g. "
        "{'sa2_code': '201011001', 'year': 2016, 'sa2_name': 'Alfredton again',")
    assert [e["select"] for e in failure.examples] == ["e", "f"]


def test_unique_treats_nulls_as_distinct(irsd):
    add_rows(irsd, (None, "a", "NSW", 2021, 1, 1.0, "x"), (None, "b", "NSW", 2021, 1, 1.0, "y"))
    assert check(irsd, {"unique": [["sa2_code", "year"]]}).passed


def test_ranges_closed_pass_and_fail(irsd):
    assert check(irsd, {"ranges": {"irsd_decile": [1, 10]}}).passed
    add_rows(irsd, ("1", "a", "NSW", 2021, 11, 1.0, "x"), ("2", "b", "NSW", 2021, 0, 1.0, "y"),
             ("3", "c", "NSW", 2021, 12, 1.0, "z"), ("4", "d", "NSW", 2021, None, 1.0, "n"))
    failure = only_failure(check(irsd, {"ranges": {"irsd_decile": [1, 10]}}, max_examples=2))
    assert failure.message == (
        "stage 'validate': ranges: 3 rows have irsd_decile outside [1, 10]; e.g. "
        "{'irsd_decile': 11, 'sa2_code': '1', 'sa2_name': 'a', 'state': 'NSW', 'year': 2021, "
        "'my col': 1.0, 'select': 'x'}, {'irsd_decile': 0, 'sa2_code': '2', 'sa2_name': 'b', "
        "'state': 'NSW', 'year': 2021, 'my col': 1.0, 'select': 'y'}")
    assert failure.count == 3 and len(failure.examples) == 2


def test_ranges_open_ends(irsd):
    assert check(irsd, {"ranges": {"my col": [1.5, None], "year": [None, 2021]}}).passed
    report = check(irsd, {"ranges": {"my col": [2.5, None], "year": [None, 2020]}}, max_examples=0)
    assert [f.message for f in report.failures] == [
        "stage 'validate': ranges: 2 rows have \"my col\" below 2.5",
        "stage 'validate': ranges: 3 rows have year above 2020"]


def test_ranges_on_dates_take_text_bounds(con):
    con.execute("CREATE TABLE releases (released DATE)")
    con.executemany("INSERT INTO releases VALUES (?)", [[date(2021, 6, 30)], [date(2016, 8, 1)]])
    rules = {"ranges": {"released": ["2020-01-01", None]}}
    failure = only_failure(check(con, rules, table="releases"))
    assert failure.message == ("stage 'validate': ranges: 1 row has released below '2020-01-01'; "
                               "e.g. {'released': '2016-08-01'}")
    assert failure.examples == [{"released": date(2016, 8, 1)}]


def test_allowed_values_pass_and_fail_and_null_is_allowed(irsd):
    add_rows(irsd, ("9", "Nowhere", None, 2021, 5, 1.0, "n"))
    assert check(irsd, {"allowed_values": {"state": ["NSW", "VIC"], "year": [2016, 2021]}}).passed
    add_rows(irsd, ("8", "Darwin", "NT", 2021, 5, 1.0, "t"))
    failure = only_failure(check(irsd, {"allowed_values": {"state": ["NSW", "VIC"]}}))
    assert failure.message == (
        "stage 'validate': allowed_values: 1 row has state not in ['NSW', 'VIC']; e.g. "
        "{'state': 'NT', 'sa2_code': '8', 'sa2_name': 'Darwin', 'year': 2021, "
        "'irsd_decile': 5, 'my col': 1.0, 'select': 't'}")


def test_pattern_is_a_full_match_and_skips_nulls(irsd):
    add_rows(irsd, (None, "Nowhere", "NSW", 2021, 5, 1.0, "n"))
    assert check(irsd, {"pattern": {"sa2_code": "[0-9]{9}"}}).passed
    failure = only_failure(check(irsd, {"pattern": {"sa2_code": "[0-9]{5}"}}, max_examples=1))
    assert failure.count == 4
    assert failure.message.startswith(
        "stage 'validate': pattern: 4 rows have sa2_code not matching '[0-9]{5}'; e.g. "
        "{'sa2_code': '101021007',")


def test_pattern_with_quotes_and_backslashes_is_bound_not_spliced(irsd):
    regex = r"O'Brien\.\d+\"; DROP TABLE irsd; --"
    add_rows(irsd, ("1", "O'Brien.12\"; DROP TABLE irsd; --", "NSW", 2021, 1, 1.0, "q"))
    failure = only_failure(check(irsd, {"pattern": {"sa2_name": regex}}))
    assert failure.count == 4
    assert failure.message.startswith(
        "stage 'validate': pattern: 4 rows have sa2_name not matching "
        "'O'Brien\\.\\d+\\\"; DROP TABLE irsd; --'; e.g.")
    assert irsd.execute("SELECT count(*) FROM irsd").fetchone() == (5,)


def test_columns_named_select_and_with_a_space(irsd):
    rules = {"not_null": ["select", "my col"], "unique": [["select", "my col"]],
             "ranges": {"my col": [0, 5]}, "allowed_values": {"select": ["a", "b", "c", "d"]},
             "pattern": {"select": "[a-d]"}}
    assert check(irsd, rules).passed
    add_rows(irsd, ("1", "x", "NSW", 2021, 1, 9.0, "a"))
    report = check(irsd, rules, max_examples=0)
    assert [f.message for f in report.failures] == [
        "stage 'validate': ranges: 1 row has \"my col\" outside [0, 5]"]


def test_every_check_counts_in_sql_on_a_large_table(con):
    con.execute("CREATE TABLE big AS SELECT i AS id, i % 100 AS decile FROM range(200000) t(i)")
    failure = only_failure(check(con, {"ranges": {"decile": [0, 89]}}, table="big"))
    assert failure.count == 20000
    assert failure.examples == [{"id": i, "decile": i} for i in range(90, 95)]


# ---------------------------------------------------------------- JSON Schema

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "IRSD by SA2",
    "type": "object",
    "required": ["sa2_code", "irsd_decile"],
    "properties": {
        "sa2_code": {"type": "string", "pattern": "^[0-9]{9}$", "minLength": 9, "maxLength": 9},
        "state": {"type": ["string", "null"], "enum": ["NSW", "VIC", "QLD"]},
        "irsd_decile": {"type": "integer", "minimum": 1, "maximum": 10},
        "my col": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 5},
        "absent": {"type": "string"},
    },
}


def write_schema(tmp_path, doc, name="irsd.json"):
    (tmp_path / "schemas").mkdir(exist_ok=True)
    (tmp_path / "schemas" / name).write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return f"schemas/{name}"


def test_schema_pass(irsd, tmp_path):
    rules = {"schema": write_schema(tmp_path, SCHEMA)}
    check_rules(rules, stage="validate", base_dir=tmp_path)
    assert check(irsd, rules, base_dir=tmp_path).passed


def test_schema_row_checks_fail(irsd, tmp_path):
    add_rows(irsd, ("12345", "x", "WA", 2021, 0, 5.0, "e"), (None, "y", None, 2021, 11, 0.0, "f"))
    report = check(irsd, {"schema": write_schema(tmp_path, SCHEMA)}, base_dir=tmp_path,
                   max_examples=0)
    assert [f.message for f in report.failures] == [
        "stage 'validate': schema: 1 row has NULL in sa2_code (schemas/irsd.json required)",
        "stage 'validate': schema: 1 row has sa2_code not matching '^[0-9]{9}$' "
        "(schemas/irsd.json pattern)",
        "stage 'validate': schema: 1 row has sa2_code shorter than 9 characters "
        "(schemas/irsd.json minLength)",
        "stage 'validate': schema: 1 row has state not in ['NSW', 'VIC', 'QLD'] "
        "(schemas/irsd.json enum)",
        "stage 'validate': schema: 1 row has irsd_decile below 1 (schemas/irsd.json minimum)",
        "stage 'validate': schema: 1 row has irsd_decile above 10 (schemas/irsd.json maximum)",
        "stage 'validate': schema: 1 row has \"my col\" at or below 0 "
        "(schemas/irsd.json exclusiveMinimum)",
        "stage 'validate': schema: 1 row has \"my col\" at or above 5 "
        "(schemas/irsd.json exclusiveMaximum)"]
    assert {f.rule for f in report.failures} == {"schema"}


def test_schema_pattern_searches_and_integer_needs_whole_numbers(irsd, tmp_path):
    doc = {"properties": {"sa2_name": {"pattern": "ar"}, "my col": {"type": "integer"}}}
    report = check(irsd, {"schema": write_schema(tmp_path, doc)}, base_dir=tmp_path,
                   max_examples=1)
    assert [f.message for f in report.failures] == [
        "stage 'validate': schema: 3 rows have sa2_name not matching 'ar' (schemas/irsd.json "
        "pattern); e.g. {'sa2_name': 'Braidwood', 'sa2_code': '101021007', 'state': 'NSW', "
        "'year': 2021, 'irsd_decile': 3, 'my col': 1.5, 'select': 'a'}",
        "stage 'validate': schema: 2 rows have \"my col\" not a whole number (schemas/irsd.json "
        "type integer); e.g. {'my col': 1.5, 'sa2_code': '101021007', 'sa2_name': 'Braidwood', "
        "'state': 'NSW', 'year': 2021, 'irsd_decile': 3, 'select': 'a'}"]


def test_schema_table_level_failures(irsd, tmp_path):
    doc = {"required": ["sa2_code", "irsd_score"], "properties": {"year": {"type": "string"}}}
    report = check(irsd, {"schema": write_schema(tmp_path, doc), "quarantine": True},
                   base_dir=tmp_path)
    assert [f.message for f in report.failures] == [
        "stage 'validate': schema: missing column(s) irsd_score required by schemas/irsd.json "
        "(the output has: sa2_code, sa2_name, state, year, irsd_decile, \"my col\", select)",
        "stage 'validate': schema: column year is INTEGER, but schemas/irsd.json gives its type "
        "as string"]
    assert report.rejected == 0


def test_schema_file_missing(tmp_path):
    with pytest.raises(ConfigError) as err:
        check_rules({"schema": "schemas/nope.json"}, stage="validate", base_dir=tmp_path)
    assert str(err.value) == (
        f"stage 'validate': validation rule schema names 'schemas/nope.json', but "
        f"{tmp_path}/schemas/nope.json does not exist; give the path of a JSON Schema file "
        f"relative to {tmp_path}")


def test_schema_file_not_json(tmp_path):
    rules = {"schema": write_schema(tmp_path, '{"properties": {"a": {"type": "string"},}}')}
    with pytest.raises(ConfigError) as err:
        check_rules(rules, stage="validate", base_dir=tmp_path)
    assert str(err.value) == (
        f"stage 'validate': schema file {tmp_path}/schemas/irsd.json is not valid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 41 (char 40)")


def test_schema_unsupported_keywords_are_named(tmp_path):
    doc = {"properties": {"a": {"type": "string", "format": "date"}, "b": {"oneOf": []}},
           "additionalProperties": False}
    with pytest.raises(ConfigError) as err:
        check_rules({"schema": write_schema(tmp_path, doc)}, stage="validate", base_dir=tmp_path)
    assert str(err.value) == (
        f"stage 'validate': schema file {tmp_path}/schemas/irsd.json uses JSON Schema keyword(s) "
        "not supported here: additionalProperties, properties.a.format, properties.b.oneOf; "
        "supported: type, properties, required, enum, minimum, maximum, exclusiveMinimum, "
        "exclusiveMaximum, pattern, minLength, maxLength")


@pytest.mark.parametrize("doc, message", [
    ({"properties": {"a": {"type": "int"}}},
     "properties.a.type must be one of string, integer, number, boolean, null or a list of them, "
     "not 'int'"),
    ({"properties": {"a": {"minimum": "1"}}}, "properties.a.minimum must be a number, not '1'"),
    ({"properties": {"a": {"pattern": "(unclosed"}}},
     "properties.a.pattern is not a valid regular expression (missing ): (unclosed): "
     "'(unclosed'; DuckDB uses RE2 syntax"),
    ({"type": "array"}, "type must be 'object' (the schema of one row), not 'array'"),
])
def test_schema_bad_values(tmp_path, doc, message):
    with pytest.raises(ConfigError) as err:
        check_rules({"schema": write_schema(tmp_path, doc)}, stage="validate", base_dir=tmp_path)
    assert str(err.value) == f"stage 'validate': schema file {tmp_path}/schemas/irsd.json: {message}"


# ---------------------------------------------------------------- quarantine

BAD = [(None, "Nowhere", "NSW", 2021, 5, 1.0, "n"),
       ("301011001", "Brisbane", "QLD", 2021, 11, 1.0, "q"),
       ("101021007", "Braidwood again", "NSW", 2021, 3, 1.5, "r")]
QUARANTINE = {"not_null": ["sa2_code"], "unique": [["sa2_code", "year"]],
              "ranges": {"irsd_decile": [1, 10]}, "allowed_values": {"state": ["NSW", "VIC"]},
              "quarantine": True}


def rejected(con, table="stage.main.validate_rejected"):
    return con.execute(f"SELECT sa2_code, \"select\", _rejected_reason FROM {table} "
                       "ORDER BY \"select\"").fetchall()


def test_quarantine_moves_bad_rows_and_passes(irsd):
    add_rows(irsd, *BAD)
    report = check(irsd, QUARANTINE)
    assert (report.passed, report.failures, report.rows, report.rejected, report.rejected_table) \
        == (True, [], 7, 3, "stage.main.validate_rejected")
    assert [(f.rule, f.count) for f in report.quarantined] == [
        ("not_null", 1), ("unique", 1), ("ranges", 1), ("allowed_values", 1)]
    assert rejected(irsd) == [
        (None, "n", "not_null:sa2_code"),
        ("301011001", "q", "ranges:irsd_decile; allowed_values:state"),
        ("101021007", "r", "unique:sa2_code,year")]
    assert irsd.execute("SELECT * FROM irsd ORDER BY \"select\"").fetchall() == ROWS
    enforce(report)


def test_quarantine_schema_row_checks(irsd, tmp_path):
    add_rows(irsd, ("12345", "x", "NSW", 2021, 5, 1.0, "e"))
    report = check(irsd, {"schema": write_schema(tmp_path, SCHEMA), "quarantine": True},
                   base_dir=tmp_path)
    assert (report.passed, report.rejected) == (True, 1)
    assert rejected(irsd) == [("12345", "e", "schema.pattern:sa2_code; schema.minLength:sa2_code")]


def test_quarantine_twice_does_not_duplicate_rejected_rows(irsd):
    add_rows(irsd, *BAD)
    check(irsd, QUARANTINE)
    second = check(irsd, QUARANTINE)
    assert (second.passed, second.rejected, second.rejected_table) == (True, 0, None)
    assert len(rejected(irsd)) == 3
    make_irsd(irsd, ROWS + BAD)                       # the stage runs again
    again = check(irsd, QUARANTINE)
    assert again.rejected == 3 and len(rejected(irsd)) == 3
    assert irsd.execute("SELECT count(*) FROM irsd").fetchone() == (4,)


def test_quarantine_keeps_rows_when_a_table_level_rule_fails(irsd):
    add_rows(irsd, *BAD)
    report = check(irsd, {**QUARANTINE, "min_records": 5}, max_examples=0)
    assert [f.message for f in report.failures] == [
        "stage 'validate': min_records: 4 rows after quarantining 3, at least 5 required",
        "stage 'validate': not_null: 1 row has NULL in sa2_code",
        "stage 'validate': unique: 1 row duplicates an earlier row's (sa2_code, year)",
        "stage 'validate': ranges: 1 row has irsd_decile outside [1, 10]",
        "stage 'validate': allowed_values: 1 row has state not in ['NSW', 'VIC']"]
    assert (report.rejected, report.rejected_table) == (0, None)
    assert irsd.execute("SELECT count(*) FROM irsd").fetchone() == (7,)
    assert irsd.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = "
                        "'validate_rejected'").fetchone() == (0,)


def test_quarantine_inside_the_callers_transaction(irsd):
    add_rows(irsd, *BAD)
    irsd.begin()
    assert check(irsd, QUARANTINE).rejected == 3
    irsd.rollback()
    assert irsd.execute("SELECT count(*) FROM irsd").fetchone() == (7,)


def test_quarantine_refuses_a_view(irsd):
    irsd.execute("CREATE VIEW irsd_view AS SELECT * FROM irsd")
    with pytest.raises(ConfigError) as err:
        check(irsd, QUARANTINE, table="irsd_view")
    assert str(err.value) == ("stage 'validate': quarantine needs a table, but "
                              "stage.main.irsd_view is a view; have the stage create a table, "
                              "or drop quarantine")


def test_a_view_can_be_checked_without_quarantine(irsd):
    irsd.execute("CREATE VIEW irsd_view AS SELECT * FROM irsd")
    assert only_failure(check(irsd, {"unique": ["sa2_code"]}, table="irsd_view")).count == 1


# ---------------------------------------------------------------- qualified names

@pytest.fixture
def attached(con, tmp_path):
    """A second database file ATTACHed as 'seifa', holding schema 'abs' and table 'my irsd'."""
    con.execute(f"ATTACH '{tmp_path / 'seifa.duckdb'}' AS seifa")
    con.execute("CREATE SCHEMA seifa.abs")
    make_irsd(con, ROWS + BAD, name='seifa.abs."my irsd"')
    return con


@pytest.mark.parametrize("table", [["seifa", "abs", "my irsd"], 'seifa.abs."my irsd"',
                                   '"seifa"."abs"."my irsd"'])
def test_table_in_an_attached_database(attached, table):
    report = check(attached, {"not_null": ["sa2_code"]}, table=table)
    assert (report.table, report.failures[0].count) == ('seifa.abs."my irsd"', 1)


def test_quarantine_in_an_attached_database(attached):
    report = check(attached, QUARANTINE, table=["seifa", "abs", "my irsd"])
    assert (report.rejected, report.rejected_table) == (3, "seifa.abs.validate_rejected")
    assert len(rejected(attached, "seifa.abs.validate_rejected")) == 3
    assert attached.execute('SELECT count(*) FROM seifa.abs."my irsd"').fetchone() == (4,)


def test_catalog_dot_table_read_only(con, tmp_path):
    writer = duckdb.connect(str(tmp_path / "upstream.duckdb"))
    make_irsd(writer, ROWS + BAD, name="output")
    writer.close()
    con.execute(f"ATTACH '{tmp_path / 'upstream.duckdb'}' AS upstream (READ_ONLY)")
    report = check(con, {"not_null": ["sa2_code"]}, table='"upstream"."output"')
    assert (report.table, report.failures[0].count) == ("upstream.main.output", 1)
    with pytest.raises(StageOutputError) as err:
        check(con, QUARANTINE, table="upstream.output")
    assert str(err.value).startswith(
        "stage 'validate': could not move rejected rows of upstream.main.output to "
        "upstream.main.validate_rejected: ")
    assert con.execute("SELECT count(*) FROM upstream.output").fetchone() == (7,)


def test_missing_table(con):
    with pytest.raises(StageOutputError) as err:
        check(con, {}, table="main.nothing")
    assert str(err.value) == ("stage 'validate': output table main.nothing does not exist; "
                              "the stage must create it before its rules can be checked")


def test_bad_table_name(con):
    with pytest.raises(ConfigError) as err:
        check(con, {}, table="a.b.c.d")
    assert str(err.value) == (
        "stage 'validate': 'a.b.c.d' is not a table name; write table, schema.table or "
        'database.schema.table (double-quote parts with spaces or dots, such as '
        'db.main."my table"), or pass the parts as a list')


# ---------------------------------------------------------------- config errors

def test_unknown_rule():
    with pytest.raises(ConfigError) as err:
        check_rules({"min_record": 10}, stage="extract")
    assert str(err.value) == ("stage 'extract': unknown validation rule 'min_record'; "
                              "did you mean 'min_records'?")


def test_unknown_rule_without_a_close_match():
    with pytest.raises(ConfigError) as err:
        check_rules({"freshness": "P1D"}, stage="extract")
    assert str(err.value) == (
        "stage 'extract': unknown validation rule 'freshness'; the rules are required_columns, "
        "min_records, max_records, not_null, unique, ranges, allowed_values, pattern, schema, "
        "quarantine")


def test_rule_naming_a_missing_column(irsd):
    with pytest.raises(ConfigError) as err:
        check(irsd, {"not_null": ["sa2_cod"]}, stage="extract")
    assert str(err.value) == (
        "stage 'extract': validation rule not_null names column 'sa2_cod', which the output "
        "does not have (its columns: sa2_code, sa2_name, state, year, irsd_decile, \"my col\", "
        "select); did you mean 'sa2_code'?; if it is the data that may lack it (a file without "
        "the column), list it under required_columns too: such data then fails validation as "
        "bad input, not as a configuration error")


def test_rule_naming_a_column_nothing_like_the_others(irsd):
    with pytest.raises(ConfigError) as err:
        check(irsd, {"unique": [["state", "population"]]})
    assert "select); name one of its columns; if it is the data that may lack it" in str(err.value)


@pytest.mark.parametrize("rules, message", [
    ({"not_null": "sa2_code"}, "validation rule not_null must be a list of column names such as "
                               "[sa2_code, sa2_name], not 'sa2_code'"),
    ({"min_records": -1}, "validation rule min_records must be a whole number of rows, 0 or more, "
                          "not -1"),
    ({"max_records": True}, "validation rule max_records must be a whole number of rows, 0 or "
                            "more, not True"),
    ({"min_records": 10, "max_records": 5}, "min_records 10 is greater than max_records 5; "
                                            "lower min_records or raise max_records"),
    ({"unique": [["a", 1]]}, "validation rule unique must be a list whose items are a column or "
                             "a list of columns (a composite key), such as [sa2_code, "
                             "[state, year]], not [['a', 1]]"),
    ({"ranges": {"d": 5}}, "ranges for d must be [min, max] with numbers, text or null for an "
                           "open end, not 5"),
    ({"ranges": {"d": [None, None]}}, "ranges for d is [null, null], which checks nothing; give "
                                      "at least one bound"),
    ({"ranges": {"d": [10, 1]}}, "ranges for d is [10, 1], whose minimum is greater than its "
                                 "maximum; write it as [1, 10]"),
    ({"ranges": ["d"]}, "validation rule ranges must map column names to [min, max], such as "
                        "{irsd_decile: [1, 10]}, not ['d']"),
    ({"allowed_values": {"s": []}}, "allowed_values for s lists no values, so every row with a "
                                    "value would fail; list the allowed values"),
    ({"allowed_values": {"s": [["NSW"]]}}, "allowed_values for s must be a list of numbers, "
                                           "text or booleans, not [['NSW']]"),
    ({"pattern": {"s": "[0-9"}}, "pattern for s is not a valid regular expression (missing ]: "
                                 "[0-9): '[0-9'; DuckDB uses RE2 syntax"),
    ({"quarantine": "yes"}, "validation rule quarantine must be true or false, not 'yes'"),
    ({"schema": 3}, "validation rule schema must be the path of a JSON Schema file, such as "
                    "schemas/irsd.json, not 3"),
])
def test_bad_rule_values(rules, message):
    with pytest.raises(ConfigError) as err:
        check_rules(rules, stage="extract")
    assert str(err.value) == f"stage 'extract': {message}"


def test_rules_must_be_a_mapping():
    with pytest.raises(ConfigError) as err:
        check_rules(["min_records"], stage="extract")
    assert str(err.value) == ("stage 'extract': validation_rules must be a mapping of rule name "
                              "to setting, such as {min_records: 1000}, not ['min_records']")


@pytest.mark.parametrize("rules, message", [
    ({"ranges": {"sa2_code": [1, 10]}}, "ranges for sa2_code compares the VARCHAR column sa2_code "
                                        "with 1"),
    ({"allowed_values": {"year": ["2021"]}}, "allowed_values for year compares the INTEGER column "
                                             "year with '2021'"),
])
def test_values_of_the_wrong_type(irsd, rules, message):
    with pytest.raises(ConfigError) as err:
        check(irsd, rules)
    assert str(err.value) == (f"stage 'validate': {message}; give values of the column's type, "
                              "or cast the column in the stage")


def test_a_value_duckdb_cannot_convert_names_the_rule(con):
    con.execute("CREATE TABLE releases AS SELECT DATE '2021-06-30' AS released, 1 AS n")
    with pytest.raises(ConfigError) as err:
        check(con, {"ranges": {"n": [0, 5], "released": ["30/06/2021", None]}}, table="releases")
    assert str(err.value) == (
        "stage 'validate': ranges for released cannot be checked: Conversion Error: invalid date "
        "field format: \"30/06/2021\", expected format is (YYYY-MM-DD); give values of the "
        "column's type")


# ---------------------------------------------------------------- enforce

def test_enforce_lists_every_failure_one_per_line(irsd):
    add_rows(irsd, (None, "Nowhere", "NSW", 2021, 11, 1.0, "n"))
    report = check(irsd, {"not_null": ["sa2_code"], "ranges": {"irsd_decile": [1, 10]},
                          "min_records": 10}, max_examples=0)
    with pytest.raises(ValidationFailed) as err:
        enforce(report)
    assert str(err.value) == ("stage 'validate': min_records: 5 rows, at least 10 required\n"
                              "stage 'validate': not_null: 1 row has NULL in sa2_code\n"
                              "stage 'validate': ranges: 1 row has irsd_decile outside [1, 10]")
    assert err.value.failures == report.failures and not err.value.retryable


def test_enforce_lets_a_passing_report_through(irsd):
    assert enforce(check(irsd, {"min_records": 1})) is None
