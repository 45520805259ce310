"""The bundled AHGD pipelines on the real ABS and AIHW files.

Expected figures are computed here from the raw files with the csv and json
modules (never read back from the pipelines' own output), then compared with
what the pipelines loaded into the warehouse.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from pathlib import Path

import duckdb
import pytest
from hypothesis import example, given, settings, strategies as st

from pipelines.ahgd import mortality, seifa
from pipelines.ahgd.common import blank_sql, integer_sql, number_sql
from pipelines.config import check_files
from pipelines.config.configured import load_pipeline

from tests.ahgd_truth import (DATA, INDEXES, MORT_COUNTS, MORT_CSV, MORT_RATES, PKG, SEIFA_CSV,
                              count, level_of, rate, read_rows, seifa_mismatches)

CONFIG = PKG / "config"
AREAS = DATA / "sa2_boundaries_simplified.geojson"


# --------------------------------------------------------------------------- raw files


def pipeline(name: str, state: Path, executor: str = "inprocess", **replace: str):
    """A bundled pipeline file, loaded as the daemon loads it; ``replace`` edits its text first."""
    path = CONFIG / f"{name}.yaml"
    if replace:
        text = path.read_text()
        for old, new in replace.items():
            assert old in text
            text = text.replace(old, new)
        path = state.parent / f"{state.name}-{name}.yaml"
        path.write_text(text)
    return load_pipeline(path, state_dir=state, executor=executor)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def raw_seifa() -> list[dict[str, str]]:
    """The SEIFA CSV as the csv module reads it: the independent truth for SEIFA checks."""
    return read_rows(SEIFA_CSV)


@pytest.fixture(scope="module")
def raw_mort() -> list[dict[str, str]]:
    """The MORT Table 1 CSV as the csv module reads it."""
    return read_rows(MORT_CSV)


@pytest.fixture(scope="module")
def raw_areas() -> dict[str, dict]:
    """The SA2 attribute file's properties by SA2 code, via the json module."""
    doc = json.loads(AREAS.read_text())
    return {f["properties"]["SA2_CODE"]: f["properties"] for f in doc["features"]}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict:
    """One state directory where all three pipelines ran once (in-process): shared by read-only tests."""
    state = tmp_path_factory.mktemp("ahgd-state")
    runs = {name: pipeline(name, state).run()
            for name in ("seifa_sa2", "mortality_regions", "sa2_health_profile")}
    for name, ctx in runs.items():
        assert ctx.state == "COMPLETED", (name, ctx.error)
    return {"state": state, "runs": runs}


def warehouse(state: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)


def query(state: Path, sql: str, params=None) -> list[tuple]:
    con = warehouse(state)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def rows_by(state: Path, table: str, key: str) -> dict:
    con = warehouse(state)
    try:
        rel = con.table(table)
        cols = rel.columns
        return {r[cols.index(key)]: dict(zip(cols, r)) for r in rel.fetchall()}
    finally:
        con.close()


# --------------------------------------------------------------------------- configuration


def test_bundled_yaml_files_are_valid(tmp_path):
    files = [CONFIG / n for n in ("master.yaml", "seifa_sa2.yaml", "mortality_regions.yaml",
                                  "sa2_health_profile.yaml")]
    assert check_files(files, state_dir=tmp_path) == []


# --------------------------------------------------------------------------- seifa_sa2


def test_seifa_loads_every_sa2_and_counts_suppressed_scores(loaded, raw_seifa):
    state = loaded["state"]
    assert len(raw_seifa) == 2293
    suppressed = {i: sum(1 for r in raw_seifa if r[f"{i}_score"] == "") for i in INDEXES}
    assert suppressed["irsd"] == 13
    assert query(state, "SELECT count(*), count(DISTINCT sa2_code) FROM seifa_sa2") == [(2293, 2293)]
    nulls = query(state, "SELECT " + ", ".join(f"count(*) - count({i}_score)" for i in INDEXES)
                  + " FROM seifa_sa2")[0]
    assert dict(zip(INDEXES, nulls)) == suppressed
    table = loaded["runs"]["seifa_sa2"].get_output("transform", "suppressed_counts")
    assert sorted(table.fetchall()) == sorted((i, 2293, n) for i, n in suppressed.items())


def test_seifa_rows_equal_the_raw_file(loaded, raw_seifa):
    got = rows_by(loaded["state"], "seifa_sa2", "sa2_code")
    assert set(got) == {r["sa2_code_2021"] for r in raw_seifa}
    for r in raw_seifa:
        row = got[r["sa2_code_2021"]]
        code = r["sa2_code_2021"]
        assert (row["state_code"], row["sa4_code"], row["sa3_code"]) == (code[0], code[:3], code[:5])
        assert row["sa2_name"] == r["sa2_name_2021"]
        assert row["usual_resident_population"] == count(r["usual_resident_population"])
        for i in INDEXES:
            assert row[f"{i}_score"] == rate(r[f"{i}_score"])
            assert row[f"{i}_decile"] == count(r[f"{i}_decile"])


def test_braidwood_by_hand(loaded, raw_areas):
    row = rows_by(loaded["state"], "seifa_sa2", "sa2_code")["101021007"]
    assert row["sa2_name"] == "Braidwood"
    assert [row[f"{i}_score"] for i in INDEXES] == [1024, 1001, 1027, 1008]
    assert [row[f"{i}_decile"] for i in INDEXES] == [6, 6, 7, 6]
    assert row["usual_resident_population"] == 4343
    assert (row["state_code"], row["state_abbr"], row["state_name"]) == ("1", "NSW", "New South Wales")
    assert row["state_name"] == raw_areas["101021007"]["STATE_NAME"]
    assert (row["sa4_code"], row["sa3_code"]) == ("101", "10102")


def test_seifa_lineage_columns(loaded):
    run = loaded["runs"]["seifa_sa2"]
    assert query(loaded["state"], "SELECT _source_sha256, _run_id, count(*) FROM seifa_sa2 "
                 "GROUP BY ALL") == [(sha256(SEIFA_CSV), run.run_id, 2293)]


# --------------------------------------------------------------------------- mortality_regions


def test_mortality_tidy_rows(loaded, raw_mort):
    state = loaded["state"]
    assert len(raw_mort) == 15855
    tidy = {(level_of(r), r["mort"], r["YEAR"], r["SEX"]) for r in raw_mort}
    assert query(state, "SELECT count(*), count(DISTINCT (geography_level, area_code, year, sex)) "
                 "FROM mortality_region") == [(len(tidy), len(tidy))]
    per_level: dict[str, int] = {}
    for level, *_ in tidy:
        per_level[level] = per_level.get(level, 0) + 1
    assert dict(query(state, "SELECT geography_level, count(*) FROM mortality_region "
                      "GROUP BY 1")) == per_level
    assert per_level == {"LGA": 8235, "SA3": 5130, "SA4": 1365, "PHN": 495, "GCCSA": 270,
                         "STE": 150, "REM": 105, "SEG": 105}


def test_mortality_values_equal_the_raw_file(loaded, raw_mort):
    con = warehouse(loaded["state"])
    try:
        rel = con.sql("SELECT * FROM mortality_region")
        cols = rel.columns
        got = {(r[cols.index("mort_code")], r[cols.index("year")], r[cols.index("sex")]):
               dict(zip(cols, r)) for r in rel.fetchall()}
    finally:
        con.close()
    for r in raw_mort:
        row = got[(r["mort"], int(r["YEAR"]), r["SEX"])]
        assert row["geography_level"] == level_of(r)
        assert row["area_name"] == r["geography"]
        for c in MORT_COUNTS:
            assert row[c] == count(r[c]), (r["mort"], c)
        for c in MORT_RATES:
            assert row[c] == rate(r[c]), (r["mort"], c)


@pytest.mark.parametrize("mort_code, level, area_code", [
    ("SA310102", "SA3", "10102"), ("SA4101", "SA4", "101"), ("STE01", "STE", "01"),
    ("LGA10050", "LGA", "10050"), ("GCC1GSYD", "GCCSA", "1GSYD"), ("REM1", "REM", "1"),
    ("SEG5", "SEG", "5"), ("PHN101", "PHN", "101"), ("SA999999", "SA3", "999999"),
    ("SA8888", "SA4", "8888")])
def test_area_code_prefixes(loaded, mort_code, level, area_code):
    assert query(loaded["state"], "SELECT DISTINCT geography_level, area_code FROM "
                 "mortality_region WHERE mort_code = ?", [mort_code]) == [(level, area_code)]


# --------------------------------------------------------------------------- sa2_health_profile


def latest_persons(raw_mort: list[dict[str, str]], sa3: str) -> dict[str, str]:
    rows = [r for r in raw_mort if r["mort"] == f"SA3{sa3}" and r["SEX"] == "Persons"]
    return max(rows, key=lambda r: int(r["YEAR"]))


def test_profile_braidwood_by_hand(loaded, raw_mort, raw_areas):
    row = rows_by(loaded["state"], "sa2_health_profile", "sa2_code")["101021007"]
    mort = latest_persons(raw_mort, "10102")
    area = raw_areas["101021007"]["AREA_SQKM"]
    assert area == 3418.3525
    assert row["irsd_score"] == 1024 and row["irsd_decile"] == 6
    assert row["sa3_code"] == "10102" and row["sa3_name"] == mort["geography"] == "Queanbeyan"
    assert row["sa3_mortality_year"] == int(mort["YEAR"])
    assert row["sa3_age_standardised_rate_per_100000"] == float(mort["age_standardised_rate_per_100000"])
    assert row["sa3_premature_deaths_asr_per_100000"] == float(mort["premature_deaths_asr_per_100000"])
    assert row["sa3_potentially_avoidable_deaths"] == count(mort["potentially_avoidable_deaths"])
    assert row["area_sqkm"] == area
    assert row["population_density_per_sqkm"] == pytest.approx(4343 / 3418.3525)


def test_profile_coverage(loaded, raw_seifa, raw_mort, raw_areas):
    sa3_with_mortality = {r["mort"][3:] for r in raw_mort
                          if r["mort"].startswith("SA3") and len(r["mort"]) == 8}
    codes = [r["sa2_code_2021"] for r in raw_seifa]
    with_mortality = sum(1 for c in codes if c[:5] in sa3_with_mortality)
    with_area = sum(1 for c in codes if c in raw_areas)
    assert (len(codes), with_mortality, with_area) == (2293, 2293, 958)
    assert query(loaded["state"], "SELECT count(*), count(sa3_mortality_year), count(area_sqkm) "
                 "FROM sa2_health_profile") == [(len(codes), with_mortality, with_area)]


def test_profile_lineage(loaded):
    shas = {"seifa": sha256(SEIFA_CSV), "mort": sha256(MORT_CSV), "areas": sha256(AREAS)}
    both = hashlib.sha256(",".join(sorted([shas["seifa"], shas["mort"]])).encode()).hexdigest()
    all3 = hashlib.sha256(",".join(sorted(shas.values())).encode()).hexdigest()
    assert query(loaded["state"], """
        SELECT _source_sha256, seifa_source_sha256, mortality_source_sha256,
               areas_source_sha256, count(*)
        FROM sa2_health_profile GROUP BY ALL ORDER BY 5""") == [
        (all3, shas["seifa"], shas["mort"], shas["areas"], 958),
        (both, shas["seifa"], shas["mort"], None, 2293 - 958)]


def test_profile_needs_the_source_tables(tmp_path):
    ctx = pipeline("sa2_health_profile", tmp_path).run()
    assert (ctx.state, ctx.failed_stage) == ("FAILED", "extract")
    assert ctx.stage_results["extract"].error == (
        "pipeline 'sa2_health_profile' reads warehouse table(s) seifa_sa2, mortality_region, "
        "which do not exist yet; run pipeline(s) seifa_sa2, mortality_regions first")


def test_a_profile_whose_areas_file_is_missing_blames_the_configuration(tmp_path):
    """A pipeline file copied away from the bundled data (a new user's own folder) names a
    SA2 attribute file that is not there: the configuration's fault, said as such."""
    ctx = pipeline("sa2_health_profile", tmp_path / "state", **{
        "../data/sa2_boundaries_simplified.geojson": "areas/nowhere.geojson"}).run()
    assert (ctx.state, ctx.failed_stage) == ("FAILED", "extract")
    where = tmp_path / "areas" / "nowhere.geojson"
    assert ctx.stage_results["extract"].error == (
        f"SA2 attribute file {where} of pipeline 'sa2_health_profile' does not exist; check "
        f"the extract stage's areas option (a path relative to {tmp_path})")
    assert "is a configuration error" in str(ctx.error), ctx.error


# --------------------------------------------------------------------------- loads and inputs


def test_loading_twice_leaves_the_same_rows(tmp_path):
    """The second run uses the default process executor: the stages also work in workers."""
    def content():
        return query(tmp_path, "SELECT * EXCLUDE (_run_id) FROM seifa_sa2 ORDER BY sa2_code")

    first = pipeline("seifa_sa2", tmp_path).run(input_file=SEIFA_CSV)
    assert first.state == "COMPLETED", first.error
    before = content()
    second = pipeline("seifa_sa2", tmp_path, executor="process").run(input_file=SEIFA_CSV)
    assert second.state == "COMPLETED", second.error
    assert len(before) == 2293 and content() == before
    assert query(tmp_path, "SELECT DISTINCT _run_id FROM seifa_sa2") == [(second.run_id,)]
    assert second.get_output("load") == {"table": "seifa_sa2", "rows": 2293, "replaced": 2293,
                                         "source_sha256": [sha256(SEIFA_CSV)]}
    peaks = query_history(tmp_path, second.run_id)      # measured in the worker processes
    assert len(peaks) == 4 and all(mb > 0 for mb in peaks)


def test_mortality_loaded_twice_keeps_one_row_per_key(tmp_path):
    mort = pipeline("mortality_regions", tmp_path)
    runs = [mort.run(), mort.run()]
    assert [r.state for r in runs] == ["COMPLETED", "COMPLETED"]
    assert query(tmp_path, "SELECT count(*), count(DISTINCT _run_id) FROM mortality_region") == \
        [(15855, 1)]
    assert runs[1].get_output("load")["replaced"] == 15855


def test_a_corrected_file_replaces_only_the_rows_it_covers(tmp_path, raw_seifa):
    path = small_seifa(tmp_path, raw_seifa, irsd_score="1030")
    for source in (SEIFA_CSV, path):
        ctx = pipeline("seifa_sa2", tmp_path / "state").run(input_file=source)
        assert ctx.state == "COMPLETED", ctx.error
    assert query(tmp_path / "state", "SELECT _source_sha256, count(*) FROM seifa_sa2 GROUP BY 1 "
                 "ORDER BY 2") == [(sha256(path), 50), (sha256(SEIFA_CSV), 2243)]
    assert query(tmp_path / "state", "SELECT irsd_score FROM seifa_sa2 WHERE sa2_code = "
                 "'101021007'") == [(1030.0,)]


def test_the_profile_is_replaced_as_a_whole(tmp_path):
    for name in ("seifa_sa2", "mortality_regions", "sa2_health_profile", "sa2_health_profile"):
        ctx = pipeline(name, tmp_path).run()
        assert ctx.state == "COMPLETED", ctx.error
    assert ctx.get_output("load")["replaced"] == 2293
    assert query(tmp_path, "SELECT count(*), count(DISTINCT sa2_code), count(DISTINCT _run_id) "
                 "FROM sa2_health_profile") == [(2293, 2293, 1)]


def test_latin1_files_load_guessed_and_reported_or_as_the_encoding_option_says(tmp_path):
    lines = SEIFA_CSV.read_text().splitlines()[:30]
    lines[1] = lines[1].replace("Braidwood", "Braidwood Café")
    path = tmp_path / "seifa_latin1.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    utf8 = {"config: {source: ../data/seifa_2021_sa2.csv}": "config: {encoding: utf-8}"}
    strict = pipeline("seifa_sa2", tmp_path / "a", **utf8).run(input_file=path)
    assert strict.stage_results["extract"].error.startswith(
        "seifa_latin1.csv is not utf-8 text (invalid continuation byte")
    for state, options in ((tmp_path / "b", {}),     # encoding: auto, the default
                           (tmp_path / "c", {"config: {source: ../data/seifa_2021_sa2.csv}":
                                             "config: {encoding: latin-1}"})):
        ctx = pipeline("seifa_sa2", state, **options).run(input_file=path)
        assert ctx.state == "COMPLETED", ctx.error
        assert ctx.get_output("extract")["encoding_guessed"] == (not options)
        assert query(state, "SELECT sa2_name FROM seifa_sa2 WHERE sa2_code = '101021007'") \
            == [("Braidwood Café",)]


def query_history(state: Path, run_id: str) -> list[float]:
    import sqlite3

    con = sqlite3.connect(state / "history.db")
    try:
        return [r[0] for r in con.execute(
            "SELECT peak_rss_mb FROM stage_timings WHERE run_id = ?", [run_id])]
    finally:
        con.close()


def test_mortality_file_given_to_seifa_is_refused_naming_the_columns(tmp_path):
    reason = ("aihw_mort_table1.csv is not an ABS SEIFA by SA2 table: missing column(s) sa2_code, "
              "and one of irsd_score, irsad_score, ier_score, ieo_score (its columns: mort, "
              "category, geography, YEAR, SEX, deaths, population, crude_rate_per_100000, ... and "
              "11 more); see docs/bundled-pipelines.md for the accepted column names, or map them "
              "in the extract stage's config:\n  columns:\n    sa2_code: <its name in the file, or "
              "its position counting from 1>\n    irsd_score: <its name in the file, or its "
              "position counting from 1>")
    assert seifa.check_input(MORT_CSV) == reason
    assert seifa.check_input(SEIFA_CSV) is None
    ctx = pipeline("seifa_sa2", tmp_path).run(input_file=MORT_CSV)
    assert (ctx.state, ctx.failed_stage) == ("FAILED", "extract")
    result = ctx.stage_results["extract"]
    assert (result.error, result.attempts) == (reason, 1)        # not retried


def test_seifa_file_given_to_mortality_is_refused(tmp_path):
    assert mortality.check_input(SEIFA_CSV).startswith(
        "seifa_2021_sa2.csv is not an AIHW MORT Table 1 table: missing column(s) mort, year, "
        "sex, deaths, age_standardised_rate_per_100000 (its columns: sa2_code_2021, ")
    assert mortality.check_input(MORT_CSV) is None
    assert mortality.check_input(tmp_path / "absent.csv") == (
        "absent.csv cannot be read (No such file or directory)")
    (tmp_path / "empty.csv").write_text("")
    assert mortality.check_input(tmp_path / "empty.csv") == (
        "empty.csv is empty; expected a CSV file whose first row names the columns")


def test_without_input_or_source_the_error_says_where_to_put_one(tmp_path):
    no_source = {"config: {source: ../data/seifa_2021_sa2.csv}": "config: {}"}
    ctx = pipeline("seifa_sa2", tmp_path / "state", **no_source).run()
    assert ctx.stage_results["extract"].error == (
        f"pipeline 'seifa_sa2' needs an input file: drop one into "
        f"{tmp_path / 'state' / 'inbox' / 'seifa_sa2'} or pass --input FILE")


ALT_HEADER = {
    "sa2_code_2021": "2021 Statistical Area Level 2 (SA2) 9-Digit Code",
    "sa2_name_2021": "2021 Statistical Area Level 2 (SA2) Name",
    "irsd_score": "Index of Relative Socio-economic Disadvantage - Score",
    "irsd_decile": "Index of Relative Socio-economic Disadvantage - Decile",
    "irsad_score": "IRSAD_SCORE", "irsad_decile": "IRSAD_DECILE",
    "ier_score": "IER Score", "ier_decile": "IER Decile",
    "ieo_score": "ieo_score_2021", "ieo_decile": "IEO_DECILE_2021",
    "usual_resident_population": "Usual Resident Population",
}


def test_another_abs_layout_loads_the_same_values(tmp_path, loaded, raw_seifa):
    path = tmp_path / "SEIFA 2021 SA2 (ABS layout).csv"
    order = list(reversed(list(ALT_HEADER)))              # columns in another order too
    with open(path, "w", newline="", encoding="utf-8-sig") as f:   # with a byte-order mark
        w = csv.writer(f)
        w.writerow([ALT_HEADER[c] for c in order])
        for r in raw_seifa:
            w.writerow([r[c] if c.startswith("sa2") or not r[c] else f"{int(r[c]):,}.0"
                        for c in order])
    ctx = pipeline("seifa_sa2", tmp_path / "state").run(input_file=path)
    assert ctx.state == "COMPLETED", ctx.error
    columns = "* EXCLUDE (_run_id, _source_sha256)"
    assert query(tmp_path / "state", f"SELECT {columns} FROM seifa_sa2 ORDER BY sa2_code") == \
        query(loaded["state"], f"SELECT {columns} FROM seifa_sa2 ORDER BY sa2_code")


def small_seifa(tmp_path: Path, raw_seifa, **cells: str) -> Path:
    """The first 50 SEIFA rows, with cells of the first row replaced."""
    path = tmp_path / "seifa_small.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(raw_seifa[0]))
        w.writeheader()
        w.writerows([{**raw_seifa[0], **cells}, *raw_seifa[1:50]])
    return path


def test_a_cell_that_is_not_a_number_fails_validation_naming_it(tmp_path, raw_seifa):
    path = small_seifa(tmp_path, raw_seifa, irsd_score="abc", usual_resident_population="4,343.5")
    ctx = pipeline("seifa_sa2", tmp_path / "state").run(input_file=path)
    assert (ctx.state, ctx.failed_stage) == ("FAILED", "validate")
    assert ctx.stage_results["validate"].error == (
        "stage 'validate': validator found 2 problem(s): column irsd_score has 1 cell that is not "
        "a number, e.g. 'abc' (row 101021007); blank cells are read as suppressed (NULL), "
        "anything else must be a number such as 55,374 or 10.0; column usual_resident_population "
        "has 1 cell that is not a whole number, e.g. '4,343.5' (row 101021007); blank cells are "
        "read as suppressed (NULL), anything else must be a number such as 55,374 or 10.0")
    assert not (tmp_path / "state" / "warehouse.duckdb").exists()


def test_bad_codes_and_deciles_fail_validation(tmp_path, raw_seifa):
    path = small_seifa(tmp_path, raw_seifa, sa2_code_2021="10102100", irsd_decile="11")
    ctx = pipeline("seifa_sa2", tmp_path / "state").run(input_file=path)
    assert (ctx.state, ctx.failed_stage) == ("FAILED", "validate")
    error = ctx.stage_results["validate"].error
    assert "not_null: 1 row has NULL in state_code" in error
    assert "pattern: 1 row has sa2_code not matching '[1-9][0-9]{8}'" in error
    assert "ranges: 1 row has irsd_decile outside [1, 10]" in error


def test_mortality_rejects_a_badly_grouped_count(tmp_path, raw_mort):
    path = tmp_path / "mort_small.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(raw_mort[0]))
        w.writeheader()
        w.writerows([{**raw_mort[0], "deaths": "55,37"}, *raw_mort[1:30]])
    ctx = pipeline("mortality_regions", tmp_path / "state").run(
        input_file=path)
    assert (ctx.state, ctx.failed_stage) == ("FAILED", "validate")
    assert ctx.stage_results["validate"].error.startswith(
        "stage 'validate': validator found 1 problem(s): column deaths has 1 cell that is not a "
        "number, e.g. '55,37' (row REM1 2019 Males)")


# --------------------------------------------------------------------------- parsing, property-based


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB for the property tests (each example runs one query)."""
    c = duckdb.connect()
    yield c
    c.close()


def evaluate(con, expression: str, values: list[str | None]) -> list:
    return con.execute(f"SELECT [{expression} FOR x IN $values]",
                       {"values": values}).fetchone()[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text("0123456789", min_size=8, max_size=8), min_size=1,
                max_size=20), st.lists(st.sampled_from("123456789"), min_size=20, max_size=20))
def test_sa2_code_parts_match_string_slicing(con, tails, heads):
    codes = [h + t for h, t in zip(heads, tails)]
    parts = seifa.sa2_parts_sql("x")
    for name, cut in (("state_code", 1), ("sa4_code", 3), ("sa3_code", 5)):
        assert evaluate(con, parts[name], codes) == [c[:cut] for c in codes]
    assert evaluate(con, parts["state_abbr"], codes) == [seifa.STATES[c[0]][1] for c in codes]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text("0123456789 A-", max_size=11).filter(
    lambda s: not re.fullmatch("[1-9][0-9]{8}", s)), min_size=1, max_size=10))
def test_anything_but_nine_digits_has_no_parts(con, codes):
    parts = seifa.sa2_parts_sql("x")
    assert evaluate(con, parts["sa3_code"], codes) == [None] * len(codes)


def reference_number(text: str | None) -> float | None:
    """What a cell means, in plain Python: thousands separators only in their places."""
    t = (text or "").strip(" ")
    if t == "":
        return None
    if "," in t:
        if not re.fullmatch(r"[+-]?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?", t):
            return None
        t = t.replace(",", "")
    try:
        value = float(t)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


numbers = st.one_of(
    st.integers(-10**12, 10**12).flatmap(lambda n: st.sampled_from(
        [str(n), f"{n:,}", f"{n}.0", f"{n:,}.0", f" {n} "])),
    st.decimals(-10**9, 10**9, places=2, allow_nan=False).flatmap(lambda d: st.sampled_from(
        [str(d), f"{d:,}"])),
    st.sampled_from(["", " ", "1,2", "12,34", "1,2345", "abc", "n.p.", "inf", "nan", "1e3"]),
    st.text("0123456789,.-+ e", max_size=8),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(numbers, min_size=1, max_size=20))
@example(["+-0", "+-0.5", "+-1e3", "-+1", "--1", "+1", "-0", "1e3", " 5 ", ".5"])
def test_number_parsing_matches_python(con, cells):
    assert evaluate(con, number_sql("x"), cells) == [reference_number(c) for c in cells]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-10**9, 10**9), min_size=1, max_size=20))
def test_whole_numbers_written_with_or_without_decimals(con, ints):
    cells = [f"{n:,}.0" if n % 2 else str(n) for n in ints]
    assert evaluate(con, integer_sql(number_sql("x")), cells) == ints
    assert evaluate(con, integer_sql(number_sql("x")), ["10.5", "55,374", "", None]) == \
        [None, 55374, None, None]


def test_blank_and_not_published_cells_are_suppressed(con):
    got = con.execute(f"SELECT [{blank_sql('x')} FOR x IN $v]", {
        "v": ["", "  ", None, "n.p.", "N.P.", "0", "abc"], "suppressed": ["n.p."]}).fetchone()[0]
    assert got == [True, True, True, True, True, False, False]


def test_suppressed_scores_are_logged(tmp_path, raw_seifa):
    from structlog.testing import capture_logs

    expected = {f"{i}_score": sum(1 for r in raw_seifa if r[f"{i}_score"] == "") for i in INDEXES}
    with capture_logs() as logs:
        ctx = pipeline("seifa_sa2", tmp_path).run()
    assert ctx.state == "COMPLETED", ctx.error
    found = [e for e in logs if e["event"] == "seifa_suppressed"]
    assert len(found) == 1
    assert {k: found[0][k] for k in expected} == expected
    assert (found[0]["pipeline"], found[0]["run_id"]) == ("seifa_sa2", ctx.run_id)


# --------------------------------------------------------------------------- column order after a resume

#: a SEIFA header whose alphabetical order swaps IRSD and IRSAD: if anything on the way
#: from extract to transform sorts the column mapping, IRSAD's values load as IRSD's
SWAPPABLE = ("irsd_decile", "irsd_score", "irsad_decile", "irsad_score", "sa2_code_2021",
             "sa2_name_2021", "usual_resident_population")


def swappable_seifa(tmp_path: Path, raw_seifa) -> Path:
    path = tmp_path / "seifa_reordered.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SWAPPABLE)
        w.writerows([r[c] for c in SWAPPABLE] for r in raw_seifa)
    return path


def assert_seifa_values_equal_source(state: Path, raw_seifa, columns=SWAPPABLE) -> int:
    """Every loaded value of ``columns`` equals the raw file's; returns how many were compared."""
    got = rows_by(state, "seifa_sa2", "sa2_code")
    assert set(got) == {r["sa2_code_2021"] for r in raw_seifa}
    for r in raw_seifa:
        assert seifa_mismatches(got[r["sa2_code_2021"]], {c: r[c] for c in columns}) == []
    return len(raw_seifa) * len(columns)


def test_a_resumed_run_reads_the_columns_in_the_files_order(tmp_path, raw_seifa):
    """The extract manifest read back from the event log keeps the file's column order."""
    path = swappable_seifa(tmp_path, raw_seifa)
    state = tmp_path / "state"
    first = pipeline("seifa_sa2", state).run(input_file=path)
    assert first.state == "COMPLETED", first.error
    # a fresh pipeline object: extract's output comes from the log, not from memory
    resumed = pipeline("seifa_sa2", state).run(input_file=path, resume_from="transform")
    assert resumed.state == "COMPLETED", resumed.error
    assert [r.state for r in resumed.stage_results.values()][:1] == ["COMPLETED"]
    assert query(state, "SELECT DISTINCT _run_id FROM seifa_sa2") == [(resumed.run_id,)]
    assert assert_seifa_values_equal_source(state, raw_seifa) == len(raw_seifa) * len(SWAPPABLE)


def test_a_manifest_recorded_before_the_fix_is_matched_again_from_its_header(tmp_path, raw_seifa):
    """Logs written by earlier versions hold the column mapping with sorted keys: a run
    resumed after the upgrade must not trust that order."""
    from pipelines.ahgd.common import read_source_sql, source_columns

    path = swappable_seifa(tmp_path, raw_seifa)
    st_ = path.stat()
    names = ["irsd_decile", "irsd_score", "irsad_decile", "irsad_score", "sa2_code", "sa2_name",
             "usual_resident_population"]
    legacy = {"path": str(path), "bytes": st_.st_size, "mtime_ns": st_.st_mtime_ns,
              "encoding": "utf-8", "delimiter": ",", "header": list(SWAPPABLE),
              "columns": {n: "VARCHAR" for n in sorted(names)}}
    assert source_columns(legacy, seifa.LAYOUT) == names
    sql, params = read_source_sql(legacy, seifa.LAYOUT)
    con = duckdb.connect()
    got = con.execute(f"SELECT sa2_code, irsd_score, irsad_score FROM {sql} LIMIT 1",
                      params).fetchone()
    first = raw_seifa[0]
    assert got == (first["sa2_code_2021"], first["irsd_score"], first["irsad_score"])
