"""The generic pieces a pipeline author gets (issue 13, item 11): ``pipelines.CsvExtractor``
(strict: a ragged row or an open quote fails naming the file and the line) and
``pipelines.WarehouseLoader`` (idempotent, with lineage), from YAML on the real MORT file;
and ``output_table`` inside ``context.warehouse()``."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipelines import BasePipeline
from pipelines.config.configured import load_pipeline
from state import EventLog

from tests.ahgd_truth import MORT_CSV, SEIFA_CSV, read_rows

PIPELINE_YAML = """\
pipeline: {name: deaths, description: AIHW MORT Table 1 as published}
stages:
  - name: extract
    type: extractor
    class: pipelines.CsvExtractor
    config: {thousands: ",", types: {mort: VARCHAR}}
  - name: validate
    type: validator
    validation_rules:
      required_columns: [mort, year, sex, deaths]
      not_null: [mort, year, sex]
      unique: [[mort, year, sex]]
  - name: load
    type: loader
    class: pipelines.WarehouseLoader
    config: {table: mort_table1, key: [mort, year, sex]}
"""
MORT_KEY = ("mort", "YEAR", "SEX")


def _pipeline(tmp_path: Path, state: Path, executor: str = "inprocess", text: str = PIPELINE_YAML):
    path = tmp_path / "deaths.yaml"
    path.write_text(text)
    return load_pipeline(path, state_dir=state, executor=executor)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _warehouse(state: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def _value_matches(value: Any, text: str) -> bool:
    """A loaded value against the published cell: blank is NULL, numbers as published."""
    if text == "":
        return value is None
    if isinstance(value, str):
        return value == text
    return value == pytest.approx(float(text.replace(",", "")), abs=1e-9)


def _mismatches(state: Path, raw: list[dict[str, str]]) -> list[str]:
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as con:
        rel = con.table("mort_table1")
        cols = rel.columns
        rows = {(r[0], str(r[3]), r[4]): dict(zip(cols, r)) for r in rel.fetchall()}
    bad = []
    for line in raw:
        got = rows.get(tuple(line[k] for k in MORT_KEY))
        if got is None:
            bad.append(f"missing {line['mort']} {line['YEAR']} {line['SEX']}")
            continue
        bad += [f"{line['mort']} {line['YEAR']} {line['SEX']} {k}: {got[k]!r} vs {v!r}"
                for k, v in line.items() if not _value_matches(got[k], v)]
    return bad


@pytest.mark.parametrize("executor", ["inprocess", "process"])
def test_yaml_csv_extractor_and_warehouse_loader_load_the_file_with_lineage(
        tmp_path, state_dir, executor):
    raw = read_rows(MORT_CSV)
    first = _pipeline(tmp_path, state_dir, executor).run(input_file=MORT_CSV)
    assert first.state == "COMPLETED", first.error
    assert _mismatches(state_dir, raw) == []
    assert _warehouse(state_dir, "SELECT count(*), count(DISTINCT (mort, year, sex)), "
                                 "list(DISTINCT _source_sha256), list(DISTINCT _run_id) "
                                 "FROM mort_table1") == [
        (len(raw), len(raw), [_sha(MORT_CSV)], [first.run_id])]
    assert first.get_output("load") == {"table": "mort_table1", "rows": len(raw), "replaced": 0,
                                        "source_sha256": [_sha(MORT_CSV)]}
    # the same file again: its rows replace themselves, nothing is added
    second = _pipeline(tmp_path, state_dir, executor).run(input_file=MORT_CSV)
    assert second.state == "COMPLETED", second.error
    assert second.get_output("load")["replaced"] == len(raw)
    assert _warehouse(state_dir, "SELECT count(*), list(DISTINCT _run_id) FROM mort_table1") == [
        (len(raw), [second.run_id])]
    assert _mismatches(state_dir, raw) == []


def test_a_corrected_file_replaces_the_rows_it_covers_and_keeps_the_others(tmp_path, state_dir):
    raw = read_rows(MORT_CSV)
    assert _pipeline(tmp_path, state_dir).run(input_file=MORT_CSV).state == "COMPLETED"
    corrected = [dict(raw[0], deaths="55,375")]
    path = tmp_path / "mort-correction.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(raw[0]))
        writer.writeheader()
        writer.writerows(corrected)
    ctx = _pipeline(tmp_path, state_dir).run(input_file=path)
    assert ctx.state == "COMPLETED", ctx.error
    assert _mismatches(state_dir, corrected + raw[1:]) == []
    assert _warehouse(state_dir, "SELECT _source_sha256, count(*) FROM mort_table1 GROUP BY 1 "
                                 "ORDER BY 2") == [(_sha(path), 1), (_sha(MORT_CSV), len(raw) - 1)]


EXTRACT_ONLY = """\
pipeline: {name: deaths}
stages:
  - {name: extract, type: extractor, class: pipelines.CsvExtractor}
"""
RAGGED = "year,sex,deaths\n2019,Males,10\n2019,Females\n2019,Persons,25\n"
# a quoted value with a line break in it first: DuckDB's row 4 is the file's line 5
RAGGED_LATER = 'year,sex,deaths\n2019,"Males\n(all ages)",10\n2020,Males,11\n2021,Males,12,99\n'
OPEN_QUOTE = 'year,sex,deaths\n2019,Males,10\n2020,"Males,11\n2021,Males,12\n2022,Males,13\n'


@pytest.mark.parametrize("text, line, problem", [
    (RAGGED, 3, "this row has 2 value(s), but the header has 3 column(s)"),
    (RAGGED_LATER, 5, "this row has 4 value(s), but the header has 3 column(s)"),
    (OPEN_QUOTE, 3, "a quoted value that starts on this line is never closed"),
    ("a,b,c,d\n1,2,3\n1,2,3\n", 2, "this row has 3 value(s), but the header has 4 column(s)"),
    # Excel's trailing empty columns: said so, with the extractor that takes them
    ("year,sex,deaths,,\r\n2019,Males,10,,\r\n", 1, "the header ends in columns 4-5 without "
     "a name, as when a spreadsheet saved as CSV keeps empty columns at the right"),
    # a copy taken before it was whole (a writer that closed it, then wrote more): said so
    ("year,sex,deaths\n2019,Males,10\n2020,Fem", 3, "this row has 2 value(s), but the header "
     "has 3 column(s), and the file ends in the middle of it: the file is cut short"),
])
def test_a_ragged_row_or_an_open_quote_fails_naming_the_file_and_line(
        tmp_path, state_dir, text, line, problem):
    path = tmp_path / "deaths.csv"
    path.write_text(text)
    ctx = _pipeline(tmp_path, state_dir, text=EXTRACT_ONLY).run(input_file=path)
    assert ctx.state == "FAILED" and ctx.failed_stage == "extract"
    assert f"input file {path}, line {line}: {problem}" in ctx.error
    with EventLog.open(state_dir) as log:   # the data's fault: a drop folder quarantines it
        bad = log.query("SELECT json_extract(detail, '$.bad_input') FROM stage_runs "
                        "WHERE run_id = ? AND stage = 'extract'", [ctx.run_id])
    assert bad[0][0] == 1


def test_a_lazily_read_bad_csv_is_named_when_its_table_is_stored(tmp_path, state_dir):
    """all_varchar reads nothing in the stage: the relation fails when the runner stores it."""
    path = tmp_path / "deaths.csv"
    path.write_text(RAGGED_LATER)
    text = EXTRACT_ONLY.replace("class: pipelines.CsvExtractor}",
                                "class: pipelines.CsvExtractor, config: {all_varchar: true}}")
    ctx = _pipeline(tmp_path, state_dir, text=text).run(input_file=path)
    assert ctx.state == "FAILED"
    assert (f"input file {path}, line 5: this row has 4 value(s), but the header has 3 "
            "column(s)") in ctx.error


def test_the_bundled_seifa_pipeline_names_the_line_of_a_ragged_file(tmp_path, state_dir):
    lines = SEIFA_CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[41] = ",".join(lines[41].split(",")[:-2]) + "\n"       # line 42 loses two values
    path = tmp_path / "seifa.csv"
    path.write_text("".join(lines), encoding="utf-8")
    config = Path(__file__).resolve().parents[2] / "pipelines" / "ahgd" / "config"
    ctx = load_pipeline(config / "seifa_sa2.yaml", state_dir=state_dir,
                        executor="inprocess").run(input_file=path)
    assert ctx.state == "FAILED" and ctx.failed_stage == "transform"
    assert f"input file {path.resolve()}, line 42: this row has" in ctx.error


def test_windows_1252_text_is_read_by_the_bundled_pipelines_and_named_by_csv_extractor(
        tmp_path, state_dir):
    """SEIFA saved by Excel on Windows (Windows-1252: an en dash for a suppressed score, an
    SA2 name with ’ and é) loads with the names and NULLs it means; CsvExtractor, told
    latin-1, names the file, the line and the fix instead of DuckDB's bare "File is not
    latin-1 encoded" (a data error that named nothing)."""
    lines = SEIFA_CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace("Braidwood", "Braidwood – Araluen’s Café", 1)
    suppressed = next(i for i, line in enumerate(lines) if ",," in line)
    lines[suppressed] = lines[suppressed].replace(",,", ",–,", 1)
    path = tmp_path / "seifa.csv"
    path.write_bytes("".join(lines).encode("cp1252"))
    config = Path(__file__).resolve().parents[2] / "pipelines" / "ahgd" / "config"
    ctx = load_pipeline(config / "seifa_sa2.yaml", state_dir=state_dir,
                        executor="inprocess").run(input_file=path)
    assert ctx.state == "COMPLETED", ctx.error
    assert _warehouse(state_dir, "SELECT sa2_name, irsd_score FROM seifa_sa2 WHERE sa2_code "
                      "= '101021007'") == [("Braidwood – Araluen’s Café", 1024.0)]
    assert _warehouse(state_dir, "SELECT count(*) FROM seifa_sa2")[0][0] == len(lines) - 1
    mort = tmp_path / "mort.csv"
    rows = MORT_CSV.read_text(encoding="utf-8").splitlines(keepends=True)
    rows[5] = rows[5].replace("Australia", "Australia – ’", 1)
    mort.write_bytes("".join(rows).encode("cp1252"))
    text = PIPELINE_YAML.replace("types: {mort: VARCHAR}}", "types: {mort: VARCHAR}, "
                                 "encoding: latin-1}")
    ctx = _pipeline(tmp_path, tmp_path / "latin", text=text).run(input_file=mort)
    assert ctx.state == "FAILED" and ctx.failed_stage == "extract"
    assert (f"input file {mort}, line 6: byte 0x96 is a control code in Latin-1" in ctx.error
            and 'save it as "CSV UTF-8"' in ctx.error)
    ctx = _pipeline(tmp_path, tmp_path / "utf8").run(input_file=mort)   # utf-8, the default
    assert ctx.state == "FAILED" and ctx.failed_stage == "extract"
    assert ("mort.csv is not utf-8 text (byte 0x96 at byte " in ctx.error
            and 'it looks like Windows-1252, which Excel\'s "CSV (Comma delimited)"' in ctx.error)


def test_types_come_from_every_value_and_codes_keep_their_zeros(tmp_path, state_dir):
    path = tmp_path / "codes.csv"
    # delta: numbers but one '+-2', which DuckDB's cast would read as -2: a column of text
    rows = ["postcode,n,share,day,flag,label,delta"] + [
        f"0{800 + i},{i},{i / 4},2021-01-{i + 1:02d},{'true' if i % 2 else 'false'},x{i},{i / 2}"
        for i in range(25)] + ["2000,,0.5,,,,+-2"]
    path.write_text("\n".join(rows) + "\n")
    ctx = _pipeline(tmp_path, state_dir, text=PIPELINE_YAML.replace(
        'config: {thousands: ",", types: {mort: VARCHAR}}', "config: {}").replace(
        "validation_rules:\n      required_columns: [mort, year, sex, deaths]\n      "
        "not_null: [mort, year, sex]\n      unique: [[mort, year, sex]]",
        "validation_rules: {not_null: [postcode]}").replace(
        "key: [mort, year, sex]", "key: postcode")).run(input_file=path)
    assert ctx.state == "COMPLETED", ctx.error
    assert _warehouse(state_dir, "SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'mort_table1' ORDER BY ordinal_position") == [
        ("postcode", "VARCHAR"), ("n", "BIGINT"), ("share", "DOUBLE"), ("day", "DATE"),
        ("flag", "BOOLEAN"), ("label", "VARCHAR"), ("delta", "VARCHAR"), ("_source_sha256", "VARCHAR"),
        ("_run_id", "VARCHAR")]
    assert _warehouse(state_dir, "SELECT postcode, n, share FROM mort_table1 WHERE postcode IN "
                                 "('0800', '2000') ORDER BY 1") == [("0800", 0, 0.0),
                                                                     ("2000", None, 0.5)]


class SqlLoadPipeline(BasePipeline):
    """The README's hand-written load: SQL on the warehouse reading a stage's table."""

    def define_stages(self) -> list[str]:
        return ["extract", "load"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "extract":
            return context.sql("SELECT range AS n, range * 2 AS twice FROM range(5)")
        with context.warehouse() as con:
            con.execute("CREATE OR REPLACE TABLE numbers AS SELECT * FROM "
                        f"{context.output_table('extract')}")
            return con.execute("SELECT count(*) FROM numbers").fetchall()[0][0]


@pytest.mark.parametrize("executor", ["inprocess", "process"])
def test_output_table_works_inside_the_warehouse_connection(state_dir, executor):
    ctx = SqlLoadPipeline("sqlload", state_dir=state_dir, executor=executor, max_retries=0).run()
    assert ctx.state == "COMPLETED", ctx.error
    assert ctx.get_output("load") == 5
    assert _warehouse(state_dir, "SELECT sum(twice) FROM numbers") == [(20,)]


def test_loader_options_are_checked_with_the_fix(tmp_path, state_dir):
    from pipelines import ConfigError, WarehouseLoader

    with pytest.raises(ConfigError, match="WarehouseLoader needs a table option"):
        WarehouseLoader()
    with pytest.raises(ConfigError, match="key \\[\\] names no column"):
        WarehouseLoader(table="t", key=[])
    wrong = PIPELINE_YAML.replace("key: [mort, year, sex]", "key: [mort, yaer]")
    ctx = _pipeline(tmp_path, state_dir, text=wrong).run(input_file=MORT_CSV)
    assert ctx.state == "FAILED" and ctx.failed_stage == "load"
    assert ("warehouse table 'mort_table1': key column(s) yaer are not columns of the loaded "
            "table") in ctx.error


def test_the_bundled_pipelines_keep_no_copies_of_the_generic_pieces():
    from pipelines import CsvExtractor, WarehouseLoader
    from pipelines.ahgd import common, mortality, seifa, warehouse

    assert issubclass(seifa.SeifaExtractor, CsvExtractor)
    assert issubclass(mortality.MortalityLoader, WarehouseLoader)
    assert not hasattr(common, "resolve_input")
    assert "_write_txn" not in vars(warehouse.WarehouseLoader)
