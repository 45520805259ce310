"""The bundled pipelines on files as publishers ship them (issue 16): the ABS SEIFA data cube,
AIHW MORT books, the ABS CSV names, compressed files, publishers' conventions; each loads the
same warehouse rows as the bundled CSV for the same areas.

Fixtures are written here from the bundled CSVs (tests/publisher_layouts.py, openpyxl);
the truth is the bundled CSV loaded by the same pipeline.  DOUBLE values are compared to
nine decimals: a spreadsheet holds 15 significant digits, and the MORT CSV has cells such
as ``1.0750000000000002``.
"""

from __future__ import annotations

import csv
import gzip
import zipfile
from pathlib import Path

import duckdb
import pytest

from pipelines.ahgd import mortality, seifa
from tests.ahgd_truth import MORT_CSV, SEIFA_CSV, read_rows
from tests.pipelines.test_ahgd_pipelines import pipeline
from tests.publisher_layouts import abs_csv, mort_book, seifa_cube

SEIFA_OUT = ("sa2_code, sa2_name, state_code, state_name, state_abbr, sa4_code, sa3_code, "
             "irsd_score, irsd_decile, irsad_score, irsad_decile, ier_score, ier_decile, "
             "ieo_score, ieo_decile, usual_resident_population")


def rows(state: Path, table: str, columns: str = "*") -> list[tuple]:
    """A warehouse table's rows, sorted, without run and lineage columns, DOUBLEs rounded."""
    con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
    try:
        rel = con.sql(f"SELECT {columns} FROM {table}")
        cols = [f"round({c}, 9)" if t == "DOUBLE" else f'"{c}"'
                for c, t in zip(rel.columns, map(str, rel.types))
                if c not in ("_run_id", "_source_sha256")]
        return con.sql(f"SELECT {', '.join(cols)} FROM ({rel.sql_query()}) ORDER BY ALL").fetchall()
    finally:
        con.close()


def run(name: str, state: Path, path: Path | None = None, **replace: str) -> None:
    ctx = pipeline(name, state, **replace).run(input_file=path)
    assert ctx.state == "COMPLETED", ctx.error


def write_csv(path: Path, records: list[dict[str, str]], **kw) -> Path:
    with open(path, "w", newline="", encoding=kw.pop("encoding", "utf-8")) as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]), **kw)
        w.writeheader()
        w.writerows(records)
    return path


@pytest.fixture(scope="module")
def raw_seifa() -> list[dict[str, str]]:
    return read_rows(SEIFA_CSV)


@pytest.fixture(scope="module")
def raw_mort() -> list[dict[str, str]]:
    """Rows of every level, with suppressed (blank) cells among them."""
    every = read_rows(MORT_CSV)
    return every[:150] + every[-150:]


@pytest.fixture(scope="module")
def mort_truth(tmp_path_factory, raw_mort) -> list[tuple]:
    """The MORT rows loaded from a plain CSV of them: what every layout must give."""
    tmp = tmp_path_factory.mktemp("mort-truth")
    run("mortality_regions", tmp / "state", write_csv(tmp / "mort.csv", raw_mort))
    return rows(tmp / "state", "mortality_region")


# --------------------------------------------------------------------------- SEIFA


def test_the_seifa_data_cube_loads_the_same_rows_as_the_bundled_csv(tmp_path, raw_seifa):
    """All 2,293 SA2s in four sheets (one index each: title rows, a two-line header with
    "Ranking within Australia" merged over Rank | Decile | Percentile, "-" for a suppressed
    score, footnotes and a copyright line below), without any configuration."""
    cube = seifa_cube(tmp_path / "Statistical Area Level 2, Indexes, SEIFA 2021.xlsx", raw_seifa)
    run("seifa_sa2", tmp_path / "csv")
    run("seifa_sa2", tmp_path / "cube", cube)
    assert len(rows(tmp_path / "cube", "seifa_sa2")) == len(raw_seifa) == 2293
    assert rows(tmp_path / "cube", "seifa_sa2", SEIFA_OUT) == \
        rows(tmp_path / "csv", "seifa_sa2", SEIFA_OUT)
    # what the CSV lacks comes too: ranks and percentiles within Australia
    ranked = rows(tmp_path / "cube", "seifa_sa2",
                  "count(irsd_rank), max(irsd_rank), min(ieo_percentile), max(ieo_percentile)")
    scored = sum(1 for r in raw_seifa if r["irsd_score"])
    assert ranked == [(scored, scored, 1, 100)]


def test_an_abs_csv_with_one_index_loads_it_and_the_profile_uses_what_is_there(tmp_path,
                                                                               raw_seifa):
    """The ABS's own column names (SA2_Code_2021, IRSD_Decile_Australia, ... URP), one index
    only: that index is filled, the others are NULL, and the SA2 profile is built."""
    some = raw_seifa[:300]
    irsd = abs_csv(tmp_path / "SEIFA_2021_SA2_IRSD.csv", some, ["irsd"])
    assert seifa.check_input(irsd) is None
    run("seifa_sa2", tmp_path / "csv")
    run("seifa_sa2", tmp_path / "abs", irsd)
    codes = ", ".join(f"'{r['sa2_code_2021']}'" for r in some)
    irsd_cols = ("sa2_code, sa2_name, sa3_code, irsd_score, irsd_decile, "
                 "usual_resident_population")
    assert rows(tmp_path / "abs", "seifa_sa2", irsd_cols) == rows(
        tmp_path / "csv", f"(SELECT * FROM seifa_sa2 WHERE sa2_code IN ({codes}))", irsd_cols)
    scored = sum(1 for r in some if r["irsd_score"])
    assert rows(tmp_path / "abs", "seifa_sa2", "count(*), count(irsd_rank), count(irsad_score), "
                "count(ier_decile), count(ieo_score)") == [(300, scored, 0, 0, 0)]
    run("mortality_regions", tmp_path / "abs")
    run("sa2_health_profile", tmp_path / "abs")
    assert rows(tmp_path / "abs", "sa2_health_profile",
                "count(*), count(irsd_decile), count(irsad_decile), "
                "count(sa3_age_standardised_rate_per_100000)") == [(300, scored, 0, 300)]

    # an index other than IRSD alone is no longer refused either
    ieo = abs_csv(tmp_path / "SEIFA_2021_SA2_IEO.csv", some, ["ieo"])
    run("seifa_sa2", tmp_path / "ieo", ieo)
    assert rows(tmp_path / "ieo", "seifa_sa2", "count(ieo_score), count(ieo_decile), "
                "count(irsd_score)") == [(300, 300, 0)]


def test_a_file_lacking_a_column_names_what_it_has_lacks_and_the_lines_that_map_it(
        tmp_path, raw_seifa):
    path = tmp_path / "seifa_own_names.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Area", "Area name", "Disadvantage", "Disadvantage group", "People"])
        for r in raw_seifa[:100]:
            w.writerow([r["sa2_code_2021"], r["sa2_name_2021"], r["irsd_score"],
                        r["irsd_decile"], r["usual_resident_population"]])
    problem = seifa.check_input(path)
    assert problem.startswith(
        "seifa_own_names.csv is not an ABS SEIFA by SA2 table: missing column(s) sa2_code, and "
        "one of irsd_score, irsad_score, ier_score, ieo_score (its columns: Area, Area name, "
        "Disadvantage, Disadvantage group, People); see docs/bundled-pipelines.md for the "
        "accepted column names, or map them in the extract stage's config:\n  columns:\n")
    assert problem.splitlines()[-2:] == [
        "    sa2_code: <its name in the file, or its position counting from 1>",
        "    irsd_score: <its name in the file, or its position counting from 1>"]
    ctx = pipeline("seifa_sa2", tmp_path / "refused").run(input_file=path)
    assert ctx.stage_results["extract"].error == problem

    # the few lines of YAML the message asks for
    mapped = {"config: {source: ../data/seifa_2021_sa2.csv}": (
        "config:\n      columns: {sa2_code: Area, sa2_name: 2, irsd_score: Disadvantage, "
        "irsd_decile: Disadvantage group, usual_resident_population: People}")}
    run("seifa_sa2", tmp_path / "mapped", path, **mapped)
    run("seifa_sa2", tmp_path / "csv")
    codes = ", ".join(f"'{r['sa2_code_2021']}'" for r in raw_seifa[:100])
    cols = "sa2_code, sa2_name, irsd_score, irsd_decile, usual_resident_population"
    assert rows(tmp_path / "mapped", "seifa_sa2", cols) == rows(
        tmp_path / "csv", f"(SELECT * FROM seifa_sa2 WHERE sa2_code IN ({codes}))", cols)


def test_a_header_that_reads_two_ways_is_refused_listing_the_candidates(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("SA2_Code_2021,IRSD_Score,IRSD_Decile_Australia,irsd decile\n"
                    "101021007,1024,6,6\n")
    assert seifa.check_input(path) == (
        "twice.csv has a header that can be read more than one way: 2 columns all give "
        "irsd_decile ('IRSD_Decile_Australia', 'irsd decile'); keep one of them, or say which "
        "with the columns: option, e.g. columns: {irsd_decile: 3}")


# --------------------------------------------------------------------------- MORT


def test_mort_books_compressed_files_and_conventions_load_the_same_rows(tmp_path, raw_mort,
                                                                        mort_truth):
    """A MORT book (Table 1 below title rows and continued on a second sheet, its own header
    words, "n.p." cells, notes below, a Table 2 that is another table), the same book as
    text cells with ".." in a ZIP, and the CSV gzip'd: the rows of the plain CSV, each."""
    book = mort_book(tmp_path / "AIHW-MORT-books-2019-2023.xlsx", raw_mort, split=200)
    as_text = mort_book(tmp_path / "as_text.xlsx", raw_mort, as_text=True, blank="..")
    zipped = tmp_path / "mort-books.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(as_text, "MORT/AIHW-MORT-books.xlsx")
        z.writestr("MORT/README.txt.pdf", b"%PDF")
    gzipped = tmp_path / "mort_table1.csv.gz"
    gzipped.write_bytes(gzip.compress(write_csv(tmp_path / "plain.csv", raw_mort).read_bytes()))
    for i, path in enumerate((book, zipped, gzipped)):
        assert mortality.check_input(path) is None, path
        run("mortality_regions", tmp_path / f"s{i}", path)
        assert rows(tmp_path / f"s{i}", "mortality_region") == mort_truth, path.name


def test_a_book_with_labels_merged_down_is_refused_saying_so(tmp_path, raw_mort):
    """AIHW books often merge the MORT code, category, geography and year cells down over
    the Males, Females and Persons rows: the cells below the first read as empty.  The
    run is refused naming that (the rows whose key is partly empty, and the fix) rather
    than as "2 value(s) ... occur more than once, e.g. 'Males'"."""
    from openpyxl import load_workbook

    path = mort_book(tmp_path / "merged.xlsx", raw_mort)
    book = load_workbook(path)
    sheet = book["Table 1"]
    # rows 5 on (below the titles, a blank row and the header) merged down in threes: the
    # cells below each top one are written empty, as Excel writes a merged range
    for top in range(5, 65, 3):
        for c in (1, 2, 3, 4):
            sheet.merge_cells(start_row=top, end_row=top + 2, start_column=c, end_column=c)
    book.save(path)
    ctx = pipeline("mortality_regions", tmp_path / "state").run(input_file=path)
    assert ctx.state == "FAILED" and ctx.failed_stage == "validate"
    assert "row(s) have part of their key (geography_level, area_code, year, sex) empty, " \
           "e.g. (empty, empty, empty, " in ctx.error
    assert "merged down over several rows" in ctx.error and "occur more than once" \
        not in ctx.error


def test_publishers_conventions_in_a_csv_read_as_they_mean(tmp_path, raw_mort, mort_truth):
    """NULL markers (np, n.p., .., —, -, n.a.), a byte-order mark, Windows line endings and
    Latin-1 text (guessed, and the log says so) read as the plain CSV does."""
    markers = ["np", "n.p.", "..", "—", "-", "n.a."]
    marked, n = [], 0
    for r in raw_mort:
        out = dict(r)
        for k, v in r.items():
            if v == "":
                out[k] = markers[n % len(markers)]
                n += 1
        marked.append(out)
    assert n > 100
    utf8 = write_csv(tmp_path / "bom_crlf.csv", marked, encoding="utf-8-sig",
                     lineterminator="\r\n")
    run("mortality_regions", tmp_path / "utf8", utf8)
    assert rows(tmp_path / "utf8", "mortality_region") == mort_truth

    # Latin-1: a name with an accent, in this file and in the truth
    accented = [{k: ("-" if v == "—" else v)      # an em dash is not Latin-1
                 for k, v in dict(r, geography=r["geography"] + " é").items()} for r in marked]
    latin1 = write_csv(tmp_path / "latin1.csv", accented, encoding="latin-1",
                       lineterminator="\r\n")
    ctx = pipeline("mortality_regions", tmp_path / "latin1").run(input_file=latin1)
    assert ctx.state == "COMPLETED", ctx.error
    manifest = ctx.get_output("extract")
    assert (manifest["encoding"], manifest["encoding_guessed"]) == ("latin-1", True)
    names = rows(tmp_path / "latin1", "mortality_region", "DISTINCT area_name")
    assert names and all(n[0].endswith(" é") for n in names)
    assert [r[:2] + r[3:] for r in rows(tmp_path / "latin1", "mortality_region")] == \
        [r[:2] + r[3:] for r in mort_truth]


def test_a_zip_of_two_tables_asks_for_member_and_loads_the_one_named(tmp_path, raw_mort,
                                                                    mort_truth):
    plain = write_csv(tmp_path / "t1.csv", raw_mort)
    both = tmp_path / "two.zip"
    with zipfile.ZipFile(both, "w") as z:
        z.write(plain, "table1.csv")
        z.write(mort_book(tmp_path / "book.xlsx", raw_mort), "book.xlsx")
    assert mortality.check_input(both) == (
        "two.zip is a ZIP file with 2 data files (table1.csv, book.xlsx); say which with the "
        "extract stage's member option, e.g. member: 'table1.csv'")
    member = {"config: {source: ../data/aihw_mort_table1.csv}": "config: {member: book.xlsx}"}
    run("mortality_regions", tmp_path / "s", both, **member)
    assert rows(tmp_path / "s", "mortality_region") == mort_truth


def test_a_manifest_recorded_before_spreadsheets_is_read_as_then(tmp_path):
    """An extract output in the event log from before this change (a CSV's, without format,
    compression or a guessed encoding) is read by a resumed transform as it was then."""
    from types import SimpleNamespace

    from pipelines.ahgd.common import read_input

    st = SEIFA_CSV.stat()
    header = SEIFA_CSV.read_text().splitlines()[0].split(",")
    legacy = {"path": str(SEIFA_CSV), "sha256": "0" * 64, "bytes": st.st_size,
              "mtime_ns": st.st_mtime_ns, "encoding": "utf-8", "delimiter": ",",
              "header": header, "columns": ["sa2_code", "sa2_name", *header[2:]]}
    con = duckdb.connect()
    context = SimpleNamespace(get_output=lambda stage: legacy, duckdb=con, input_file=None,
                              state_dir=str(tmp_path), run_id="r", stage_name="transform")
    source = read_input(context, seifa.LAYOUT)
    assert con.execute(f"SELECT count(*), count(DISTINCT sa2_code), "
                       f"max(CAST(irsd_decile AS INT)) FROM {source.sql}",
                       source.params).fetchall() == [(2293, 2293, 10)]


def test_the_drop_folder_check_reads_the_file_as_the_extract_stage_will(tmp_path, raw_seifa):
    """``input_check: {stage: extract}`` (the bundled YAML's): the check, in its child
    process, is the extract stage's own, with the stage's columns mapping."""
    from ahgd_daemon import inputcheck
    from ahgd_daemon.configuration import _folder
    from pipelines import ConfigError
    from pipelines.config import load_config

    path = tmp_path / "own.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Area", "Disadvantage", "Disadvantage group"])
        w.writerows([r["sa2_code_2021"], r["irsd_score"], r["irsd_decile"]]
                    for r in raw_seifa[:20])
    yaml = Path(seifa.__file__).parent / "config" / "seifa_sa2.yaml"
    mapped = tmp_path / "seifa_sa2.yaml"
    mapped.write_text(yaml.read_text().replace(
        "config: {source: ../data/seifa_2021_sa2.csv}",
        "config: {columns: {sa2_code: Area, irsd_score: 2, irsd_decile: 3}}"))
    folders = {}
    for name, file in (("bundled", yaml), ("mapped", mapped)):
        loaded = load_config([file], state_dir=tmp_path).pipelines["seifa_sa2"]
        [trigger] = loaded.file.triggers
        folders[name] = _folder("seifa_sa2", trigger, loaded.file.stages)
    assert folders["mapped"].check_stage["config"]["columns"]["irsd_score"] == 2
    refused = inputcheck.run(folders["bundled"], path)          # a real child process
    assert refused.startswith("own.csv is not an ABS SEIFA by SA2 table: missing column(s) "
                              "sa2_code, and one of irsd_score")
    assert refused.fix == inputcheck.FILE_FIX
    assert inputcheck.run(folders["mapped"], path) is None
    # a stage that cannot be built (a config it refuses, a module that does not import)
    # fails the run, saying why, and keeps the file for a retry: the check passes it on
    broken = dict(folders["mapped"].check_stage, config={"columns": {"nonsense": 1}})
    assert inputcheck._check({"path": str(path), "stage": broken}) is None
    absent = dict(broken, config={}, **{"class": "tests.no_such_module.Extractor"})
    assert inputcheck._check({"path": str(path), "stage": absent}) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.read_text().replace("input_check: {stage: extract}",
                                            "input_check: {stage: extrct}"))
    with pytest.raises(ConfigError, match="input_check.stage: 'extrct' is not a stage of this "
                       "pipeline"):
        load_config([bad], state_dir=tmp_path)


def test_a_books_numbers_reach_the_transform_as_numbers_judged_as_their_text_would_be(
        tmp_path, raw_mort, mort_truth):
    """Columns whose cells are all numbers are given to the transform as numbers too
    (Source.numbers), not written as text and parsed back: the same rows as the CSV, and a
    year that is not whole is refused with the same words as from the CSV."""
    from pipelines.tables.source import read_source

    book = mort_book(tmp_path / "blanks.xlsx", raw_mort, blank=None, split=200)
    ctx = pipeline("mortality_regions", tmp_path / "s").run(input_file=book)
    assert ctx.state == "COMPLETED", ctx.error
    assert rows(tmp_path / "s", "mortality_region") == mort_truth
    source = read_source(duckdb.connect(), dict(ctx.get_output("extract")), tmp_path / "tmp")
    assert {"year", "deaths", "crude_rate_per_100000"} <= set(source.numbers)

    bad = [dict(r) for r in raw_mort]
    bad[7]["YEAR"] = "2020.5"
    errors = []
    for path in (write_csv(tmp_path / "bad.csv", bad),
                 mort_book(tmp_path / "bad.xlsx", bad, blank=None)):
        failed = pipeline("mortality_regions", tmp_path / path.suffix[1:]).run(input_file=path)
        assert failed.state == "FAILED", path
        errors.append(str(failed.error))
    assert "2020.5" in errors[0] and "not a whole number" in errors[0], errors[0]
    assert errors[1].replace("bad.xlsx", "bad.csv") == errors[0]
