"""``pipelines.TableExtractor`` from YAML, and the pieces under it (issue 16): header words,
spreadsheets found below their title rows, publishers' conventions, compressed files, and
input checks that read only the top of a file."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path

import duckdb
import pytest

from pipelines import ConfigError
from pipelines.config.configured import load_pipeline
from pipelines.tables import source, xlsxrows
from pipelines.tables.headers import Wanted, match_header, words

PIPELINE = """\
pipeline: {{name: deaths, description: a table as its publisher ships it}}
stages:
  - name: extract
    type: extractor
    class: pipelines.TableExtractor
    config: {config}
  - name: load
    type: loader
    class: pipelines.WarehouseLoader
    config: {{table: deaths, key: [area]}}
"""


def load(tmp_path: Path, path: Path, config: str, name: str = "state"):
    """Run the YAML pipeline on ``path``; the warehouse table's rows (sorted) and types."""
    yaml = tmp_path / f"{name}.yaml"
    yaml.write_text(PIPELINE.format(config=config))
    state = tmp_path / name
    ctx = load_pipeline(yaml, state_dir=state, executor="inprocess").run(input_file=path)
    assert ctx.state == "COMPLETED", ctx.error
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as con:
        rel = con.sql("SELECT * EXCLUDE (_run_id, _source_sha256) FROM deaths ORDER BY ALL")
        return rel.fetchall(), dict(zip(rel.columns, map(str, rel.types)))


def book(path: Path, sheets: dict[str, list[list]], merge: str | None = None) -> Path:
    from openpyxl import Workbook

    wb = Workbook()
    wb.remove(wb.active)
    for name, rows in sheets.items():
        ws = wb.create_sheet(name)
        for r in rows:
            ws.append(r)
        if merge and name == list(sheets)[-1]:
            ws.merge_cells(merge)
    wb.save(path)
    return path


DEATHS = [
    ["Table 3: Deaths by area, 2021"],
    ["Australian Institute of Health and Welfare"],
    [],
    ["Area code", "Area", "Deaths", None, "Note"],
    [None, None, "Number", "Rate per 100,000", None],
    ["0800", "Darwin", 1234, 583.7, "x"],
    ["0820", "Palmerston", "1,005", "n.p.", None],
    ["2000", "Sydney", "np", "..", None],
    ["3000", "Melbourne", "—", 612.25, None],
    [],
    ["n.p. not published. Rates are age-standardised."],
    ["© Commonwealth of Australia 2024"],
]
EXPECTED = [("0800", "Darwin", 1234, 583.7), ("0820", "Palmerston", 1005, None),
            ("2000", "Sydney", None, None), ("3000", "Melbourne", None, 612.25)]
MAPPING = "{columns: {area: 1, name: Area, deaths: Deaths Number, rate: 4}, sheet: Deaths}"


def test_a_workbook_sheet_below_title_rows_loads_through_the_columns_mapping(tmp_path):
    """Title rows, a two-line header ("Deaths" merged over Number | Rate), numbers stored as
    numbers and as text ("1,005"), NULL markers, a footnote and a copyright line below;
    codes keep their leading zeros; the sheet by name, then by index."""
    path = book(tmp_path / "deaths.xlsx", {"Contents": [["Contents"], ["Table 3", "Deaths"]],
                                           "Deaths": DEATHS}, merge="C4:D4")
    got, types = load(tmp_path, path, MAPPING)
    assert got == EXPECTED
    assert types == {"area": "VARCHAR", "name": "VARCHAR", "deaths": "BIGINT", "rate": "DOUBLE"}
    by_index = MAPPING.replace("sheet: Deaths", "sheet: 1, header_row: [4, 5]")
    assert load(tmp_path, path, by_index, "by_index")[0] == EXPECTED


def test_the_same_table_as_csv_gzip_and_zip_loads_the_same_rows(tmp_path):
    text = ("\ufeffArea code,Area,Deaths Number,\"Rate per 100,000\"\r\n"
            "0800,Darwin,\"1,234\",583.7\r\n0820,Palmerston,\"1,005\",n.p.\r\n"
            "2000,Sydney,np,..\r\n3000,Melbourne,—,612.25\r\n")
    plain = tmp_path / "deaths.csv"
    plain.write_bytes(text.encode("utf-8"))
    gz = tmp_path / "deaths.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    zipped = tmp_path / "deaths.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(gz, "data/deaths.csv.gz")
        z.writestr("__MACOSX/._deaths.csv.gz", b"junk")
    mapping = "{columns: {area: 1, name: Area, deaths: 3, rate: 4}}"
    for i, path in enumerate((plain, gz, zipped)):
        assert load(tmp_path, path, mapping, f"s{i}")[0] == EXPECTED, path.name


def test_latin1_is_guessed_and_said_and_utf8_can_be_insisted_on(tmp_path):
    from pipelines import TableExtractor

    path = tmp_path / "areas.csv"
    path.write_bytes("area,name\n1,Café\n2,Gundagai\n".encode("latin-1"))
    got, _ = load(tmp_path, path, "{}")
    assert got == [(1, "Café"), (2, "Gundagai")]
    found = TableExtractor().identify(path)        # what the extract stage logs as guessed
    assert (found["encoding"], found["encoding_guessed"]) == ("latin-1", True)
    yaml = tmp_path / "strict.yaml"
    yaml.write_text(PIPELINE.format(config="{encoding: utf-8}"))
    ctx = load_pipeline(yaml, state_dir=tmp_path / "strict", executor="inprocess").run(
        input_file=path)
    assert ctx.state == "FAILED" and "is not utf-8 text" in ctx.stage_results["extract"].error


def test_windows_1252_is_told_from_latin1_and_read_as_it_means(tmp_path):
    """Excel's "CSV (Comma delimited)" on Windows writes Windows-1252: – ’ “ ” € are bytes
    0x80-0x9F, control codes in Latin-1, which DuckDB's Latin-1 refused ("File is not
    latin-1 encoded", naming neither the file nor the line).  Such a file, plain, gzip'd
    or in a ZIP, is read as Windows-1252 and said so; its en dash is the NULL marker it
    means; a ragged row is named by the file's own line."""
    from pipelines import TableExtractor

    text = ("Area code,Area,Deaths,Rate\r\n0800,Darwin – Palmerston,\"1,234\",583.7\r\n"
            "0820,Katherine’s “East”,–,n.p.\r\n2000,Café €,12,\r\n")
    plain = tmp_path / "deaths.csv"
    plain.write_bytes(text.encode("cp1252"))
    gz = tmp_path / "deaths.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    zipped = tmp_path / "deaths.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(plain, "deaths.csv")
    expected = [("0800", "Darwin – Palmerston", 1234, 583.7),
                ("0820", "Katherine’s “East”", None, None), ("2000", "Café €", 12, None)]
    mapping = "{columns: {area: 1, name: Area, deaths: 3, rate: 4}}"
    for i, path in enumerate((plain, gz, zipped)):
        assert load(tmp_path, path, mapping, f"s{i}")[0] == expected, path.name
        found = TableExtractor().identify(path)
        assert (found["encoding"], found["encoding_guessed"]) == ("windows-1252", True)
    assert load(tmp_path, plain, "{encoding: windows-1252, columns: {area: 1, deaths: 3}}",
                "said")[0] == [("0800", 1234), ("0820", None), ("2000", 12)]
    latin = tmp_path / "latin.csv"         # no byte in 0x80-0x9F: Latin-1 as before
    latin.write_bytes("area,name\n1,Café\n".encode("latin-1"))
    assert TableExtractor().identify(latin)["encoding"] == "latin-1"
    ragged = tmp_path / "ragged.csv"
    ragged.write_bytes((text + "3000,Melbourne – CBD,1,2,3\r\n").encode("cp1252"))
    yaml = tmp_path / "ragged.yaml"
    yaml.write_text(PIPELINE.format(config=mapping))
    ctx = load_pipeline(yaml, state_dir=tmp_path / "ragged", executor="inprocess").run(
        input_file=ragged)
    assert ctx.state == "FAILED"
    assert (f"input file {ragged} (read as Windows-1252), line 5: this row has 5 value(s)"
            in ctx.error)


def test_a_utf16_csv_is_read_from_its_byte_order_mark(tmp_path):
    """Database and statistics tools' "Unicode" CSV exports are UTF-16 with a byte-order
    mark: their header read as Latin-1 was a string of NUL bytes (the bundled pipelines
    listed it as the columns the file has), and DuckDB, given the file, failed with "The
    CSV Parser state machine reached an invalid state", naming nothing.  Read as UTF-16,
    plain and gzip'd, and said so."""
    from pipelines import TableExtractor
    from pipelines.ahgd import seifa

    text = ("Area code,Area,Deaths,Rate\r\n0800,Darwin – Palmerston,\"1,234\",583.7\r\n"
            "0820,Katherine,n.p.,12.5\r\n")
    plain = tmp_path / "deaths.csv"
    plain.write_bytes(text.encode("utf-16"))          # little-endian, byte-order mark first
    gz = tmp_path / "deaths.csv.gz"
    gz.write_bytes(gzip.compress(b"\xfe\xff" + text.encode("utf-16-be")))   # big-endian
    expected = [("0800", "Darwin – Palmerston", 1234, 583.7), ("0820", "Katherine", None, 12.5)]
    for i, path in enumerate((plain, gz)):
        assert load(tmp_path, path, "{columns: {area: 1, name: Area, deaths: 3, rate: 4}}",
                    f"u{i}")[0] == expected, path.name
        found = TableExtractor().identify(path)
        assert (found["encoding"], found["encoding_guessed"]) == ("utf-16", True)
    abs_names = tmp_path / "seifa.csv"
    abs_names.write_bytes("SA2_Code_2021,SA2_Name_2021,IRSD_Score,IRSD_Decile_Australia\r\n"
                          "101021007,Braidwood,1024,6\r\n".encode("utf-16"))
    assert seifa.check_input(abs_names) is None


@pytest.mark.parametrize("rows", [2, 60_000])   # read whole at once; streamed past 1 MiB
def test_a_csv_part_utf8_part_windows_1252_is_refused_not_loaded_garbled(tmp_path, rows):
    """A file mostly UTF-8 with a line saved from Excel on Windows (edited in two programs)
    was guessed Windows-1252 as a whole, so its UTF-8 names loaded as "CafÃ© â€“ Oâ€™Brien"
    with only a log line; read as either encoding part of it is garbled, so it is refused."""
    from pipelines import TableExtractor
    from pipelines.errors import InputError

    good = "".join(f"{800 + i:04d},Café – O’Brien,{i}\r\n" for i in range(rows))
    mixed = tmp_path / "mixed.csv"
    mixed.write_bytes(("Area code,Area,Deaths\r\n" + good).encode("utf-8")
                      + "0900,Kununurra – East,7\r\n".encode("cp1252"))
    with pytest.raises(InputError, match=r"mixed\.csv mixes text encodings: some of it is "
                                         r"UTF-8 and some is not"):
        TableExtractor().identify(mixed)


def test_text_its_encoding_cannot_read_is_refused_naming_the_file_and_nothing_is_left(
        tmp_path):
    """A UTF-16 file cut short (the copy ended mid-character) failed with Python's bare
    "'utf-16-le' codec can't decode ... truncated data", naming no file, and left its
    half-made UTF-8 copy in the state directory's tmp/ for good."""
    # past the header's first MiB (read at extract): the rest is only read by the copy
    text = "Area code,Area,Deaths\r\n" + "".join(f"{800 + i:04d},Darwin,{i}\r\n"
                                                 for i in range(60_000))
    cut = tmp_path / "cut.csv"
    cut.write_bytes(text.encode("utf-16")[:-1])
    yaml = tmp_path / "cut.yaml"
    yaml.write_text(PIPELINE.format(config="{columns: {area: 1, deaths: 3}}"))
    state = tmp_path / "cut-state"
    ctx = load_pipeline(yaml, state_dir=state, executor="inprocess").run(input_file=cut)
    assert ctx.state == "FAILED"
    assert f"input file {cut} is not UTF-16 text (truncated data: a byte" in ctx.error, ctx.error
    assert "save it as \"CSV UTF-8\", or set the stage's encoding option" in ctx.error
    assert not [p for p in (state / "tmp").rglob("*.csv")]


def test_a_csv_with_a_title_line_above_its_header_is_refused_not_loaded_as_one_column(
        tmp_path):
    """AIHW and ABS CSVs saved from a workbook keep its caption: ``Table 1: Deaths ...,,,``
    above the header.  Taken as the header, it named one column and left the others
    without names, so the table was that one column (the header line and the notes as its
    rows) and the run COMPLETED; the bundled pipelines said the caption "could be any of
    geography, year, sex, deaths" and suggested mapping it.  Now both refuse the file
    saying its first line looks like a title, and a header_row for a CSV is refused rather
    than ignored.  A one-column CSV with Excel's trailing empty column still loads."""
    from pipelines import TableExtractor

    titled = tmp_path / "mort.csv"
    titled.write_text("Table 1: Deaths by area and year,,,\r\narea,year,sex,deaths\r\n"
                      "STE1,2021,Males,\"1,234\"\r\nSTE1,2021,Females,n.p.\r\n"
                      "Notes: n.p. not published,,,\r\n", encoding="utf-8")
    yaml = tmp_path / "titled.yaml"
    yaml.write_text(PIPELINE.format(config="{}"))
    ctx = load_pipeline(yaml, state_dir=tmp_path / "titled", executor="inprocess").run(
        input_file=titled)
    assert ctx.state == "FAILED" and ctx.failed_stage == "extract"
    assert ("mort.csv: its first line, 'Table 1: Deaths by area and year', names one column "
            "only, but line 2 has 4 values: the first line looks like a title") in ctx.error
    assert TableExtractor().check_input(titled).startswith("mort.csv: its first line")
    config = Path(__file__).resolve().parents[2] / "pipelines" / "ahgd" / "config"
    ctx = load_pipeline(config / "mortality_regions.yaml", state_dir=tmp_path / "bundled",
                        executor="inprocess").run(input_file=titled)
    assert ctx.state == "FAILED" and "the first line looks like a title" in ctx.error
    assert "could be any of" not in ctx.error
    bare = tmp_path / "bare.csv"          # the title alone on its line, no commas after it
    bare.write_text(titled.read_text().replace("year,,,", "year"))
    assert TableExtractor().check_input(bare).startswith("bare.csv: its first line, 'Table 1")
    with pytest.raises(Exception, match="is a CSV file, whose header is its first line, but "
                                        "the extract stage's header_row option says 2"):
        TableExtractor(header_row=2).identify(titled)
    one = tmp_path / "one.csv"
    one.write_text("area,\r\n0800,\r\n0820,\r\n")
    assert load(tmp_path, one, "{header_row: 1}", "one")[0] == [("0800",), ("0820",)]


def encrypted_workbook(path: Path, streams=("EncryptionInfo", "EncryptedPackage")) -> Path:
    """A compound file (OLE2) holding the two streams an Office file encrypted with a
    password has instead of its ZIP; each 4 KiB, so held in ordinary 512-byte sectors."""
    END, FREE, FATSECT = 0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFD
    size = 4096
    per = size // 512
    fat = [FATSECT, END]                       # sector 0: the FAT, 1: the directory
    starts = []
    for _ in streams:
        starts.append(len(fat))
        fat += list(range(len(fat) + 1, len(fat) + per)) + [END]
    fat += [FREE] * (128 - len(fat))
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(16)
              + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + bytes(6)
              + struct.pack("<IIIIIIIII", 0, 1, 1, 0, 4096, END, 0, END, 0)
              + struct.pack("<I", 0) + struct.pack("<I", FREE) * 108)

    def entry(name, kind, left, right, child, start, length):
        raw = name.encode("utf-16-le") + b"\0\0" if name else b""
        return (raw.ljust(64, b"\0") + struct.pack("<HBB", len(raw), kind, 1)
                + struct.pack("<III", left, right, child) + bytes(16) + bytes(4) + bytes(16)
                + struct.pack("<IQ", start, length))
    directory = entry("Root Entry", 5, FREE, FREE, 1, END, 0)
    for i, (name, start) in enumerate(zip(streams, starts), 1):
        right = i + 1 if i < len(streams) else FREE
        directory += entry(name, 2, FREE, right, FREE, start, size)
    directory = directory.ljust(512, b"\0")
    body = struct.pack("<128I", *fat) + directory + bytes(size * len(streams))
    with open(path, "wb") as f:
        f.write(header + body)
    return path


def test_a_workbook_with_a_password_is_refused_saying_to_remove_it(tmp_path):
    """An .xlsx saved with a password is a compound file holding the encrypted workbook:
    refused naming the password and how to remove it, not "save it again as .xlsx" (which
    it is, and saving it again keeps the password)."""
    from pipelines import TableExtractor

    for name in ("Table 1 deaths.xlsx", "Table 1 deaths.xls"):
        path = encrypted_workbook(tmp_path / name)
        problem = TableExtractor().check_input(path)
        assert problem.startswith(f"{name} is ") and "encrypted with a password" in problem
        assert "remove the password" in problem and "save it again as .xlsx" not in problem


def test_a_missing_column_and_a_bad_option_say_what_to_do(tmp_path):
    path = book(tmp_path / "deaths.xlsx", {"Deaths": DEATHS}, merge="C4:D4")
    yaml = tmp_path / "p.yaml"
    yaml.write_text(PIPELINE.format(config="{columns: {area: 1, deaths: Dead}}"))
    ctx = load_pipeline(yaml, state_dir=tmp_path / "s", executor="inprocess").run(input_file=path)
    error = ctx.stage_results["extract"].error
    assert error.startswith("deaths.xlsx has no sheet that is a table: sheet 'Deaths' ")
    assert "columns: deaths: the file has no column 'Dead' (its columns: " in error
    with pytest.raises(ConfigError, match="sheet .* must be a sheet's name, its index"):
        from pipelines import TableExtractor

        TableExtractor(sheet=1.5)


# --------------------------------------------------------------------------- header words


def test_three_spellings_are_one_column_and_the_most_specific_wins():
    decile = Wanted("irsd_decile", ("index of relative socio-economic disadvantage decile",))
    state = Wanted("irsd_state_decile", ("irsd decile state",))
    for cell in ("IRSD_Decile_Australia", "Index of Relative Socio-economic Disadvantage - "
                 "Decile", "irsd decile"):
        assert match_header(["SA2", cell, "IRSD_Decile_State"], [decile, state]).positions == {
            "irsd_decile": 1, "irsd_state_decile": 2}, cell
    assert words("SA2_MAINCODE_2021") == {"sa2", "maincode"}
    # a cell that says too little by itself is read with the title above it
    assert match_header(["Score"], [Wanted("irsd_score", ("irsd score",))],
                        context=["Table 1 IRSD, 2021"]).positions == {"irsd_score": 0}


# --------------------------------------------------------------------------- bounded checks


def test_an_input_check_reads_the_top_of_a_sheet_only(tmp_path):
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Big")
    ws.append(["A title"])
    ws.append(["area", "deaths"])
    for i in range(20000):
        ws.append([f"{i:05d}", i])
    path = tmp_path / "big.xlsx"
    wb.save(path)
    with open(path, "rb") as f:
        top = xlsxrows.first_rows(f, "Big", 60, max_bytes=4096)
    assert top[:3] == [["A title", None], ["area", "deaths"], ["00000", "0"]]
    assert 3 < len(top) < 60          # cut at 4 KiB of the sheet's XML, not at 60 rows


def test_a_spreadsheet_that_cannot_be_streamed_is_left_to_the_run_when_large(tmp_path,
                                                                            monkeypatch):
    path = book(tmp_path / "deaths.xlsx", {"Deaths": DEATHS}, merge="C4:D4")
    zipped = tmp_path / "deaths.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        z.write(path, "deaths.xlsx")
    from pipelines.tables.extractor import AllColumns

    named = AllColumns({"name": "Area", "deaths": "Deaths Number"})
    checked = source.identify(zipped, named, whole_file=False)
    assert checked["sheets"][0]["header_rows"] == [4, 5] and "unchecked" not in checked
    monkeypatch.setattr(source, "CHECK_WHOLE_LIMIT", 1000)
    assert source.identify(zipped, named, whole_file=False)["unchecked"]
    assert "unchecked" not in source.identify(zipped, named)
    # a gzip'd CSV's check decompresses its first MiB, not the file
    big = tmp_path / "big.csv.gz"
    with gzip.open(big, "wb") as f:
        f.write(b"area,deaths\n" + b"0800,1\n" * 400_000)
    raw = io.BytesIO(big.read_bytes())
    assert len(raw.getvalue()) < 100_000
    assert source.identify(big, AllColumns(), whole_file=False)["columns"] == ["area", "deaths"]


def test_a_sheet_over_the_streaming_size_loads_in_pieces_the_rows_fastexcel_gives(
        tmp_path, monkeypatch):
    """A large .xlsx sheet is read in pieces (here: over 0 bytes, pieces of 16 KiB); the
    rows are those the whole sheet gives through fastexcel: the title row, the two-line
    header, codes as text, numbers, dates, NULL markers, an empty row, the footnote and the
    copyright line below all read as before, and every row once across the pieces."""
    import datetime
    import itertools

    from pipelines.tables import xlsxstream
    from pipelines.tables.sheets import Workbook

    rows = [r for r in DEATHS[:5]]
    rows[3] = ["Area code", "Area", "Deaths", None, "Note", "Updated"]
    for i in range(2500):
        code = f"{i:04d}" if i % 3 else i + 10000       # text with leading zeros, a number
        deaths = "n.p." if i % 97 == 0 else (i * 7 if i % 2 else f"{i * 7:,}")
        rows.append([code, f"Area {i % 40}", deaths, round(i / 7, 3) if i % 11 else "..",
                     None, datetime.datetime(2024, 1, 1 + i % 28, 0 if i % 5 else 9)])
        if i == 1200:
            rows.append([])
    rows += [[], ["n.p. not published. Rates are age-standardised."],
             ["© Commonwealth of Australia 2024"]]
    path = book(tmp_path / "deaths.xlsx", {"Contents": [["Contents"]], "Deaths": rows},
                merge="C4:D4")
    mapping = ("{columns: {area: 1, name: Area, deaths: Deaths Number, rate: 4, updated: 6}, "
               "sheet: Deaths}")
    whole = load(tmp_path, path, mapping, "whole")
    monkeypatch.setenv("AHGD_XLSX_STREAM_BYTES", "0")
    monkeypatch.setenv("AHGD_XLSX_PIECE_BYTES", str(16 << 10))
    pieces = load(tmp_path, path, mapping, "pieces")
    assert len(whole[0]) == 2500 and pieces == whole
    assert ("0001", "Area 1", 7, 0.143, "2024-01-02") in whole[0]
    with open(path, "rb") as f:
        got = [(p.first, p.last, p.marked, p.end(loaded), loaded.height) for p, loaded in
               xlsxstream.sheet_pieces(f, "Deaths", 6, size=16 << 10, marker_column=7)]
    assert len(got) > 5 and got[0][:3] == (6, got[0][1], True)
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(got))
    # every row from 6 to the last (the copyright line), once, after each piece's marker row
    assert got[-1][3] == len(rows) and sum(h - 1 for *_x, h in got) <= len(rows) - 5
    # a sheet the piece reader does not take is read whole, with the same rows
    con = duckdb.connect()
    odd = tmp_path / "odd.xlsx"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(odd, "w") as out:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "xl/worksheets/sheet2.xml":
                data = data.replace(b'<row r="', b'<row spans="1:6" r="')
            out.writestr(item, data)
    dropped = Workbook(odd).stage(con, "Deaths", 6, {0: "area", 2: "deaths"}, "t", create=True)
    assert dropped == 4 and con.execute("SELECT count(*) FROM t").fetchone()[0] == 2500


def raw_book(path: Path, sheet: str, rows: bytes) -> Path:
    """A minimal .xlsx of one sheet whose ``<sheetData>`` holds ``rows`` as given."""
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    pkg = "http://schemas.openxmlformats.org/package/2006/relationships"
    ct = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<Types xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/content-types"><Default Extension="xml" ContentType='
                   f'"application/xml"/><Override PartName="/xl/workbook.xml" ContentType="{ct}'
                   '.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" '
                   f'ContentType="{ct}.worksheet+xml"/></Types>')
        z.writestr("_rels/.rels", f'<Relationships xmlns="{pkg}"><Relationship Id="rId1" '
                   f'Type="{rel}/officeDocument" Target="xl/workbook.xml"/></Relationships>')
        z.writestr("xl/workbook.xml", f'<workbook xmlns="{main}" xmlns:r="{rel}"><sheets>'
                   f'<sheet name="{sheet}" sheetId="1" r:id="rId1"/></sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels", f'<Relationships xmlns="{pkg}"><Relationship '
                   f'Id="rId1" Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/>'
                   "</Relationships>")
        z.writestr("xl/worksheets/sheet1.xml", f'<worksheet xmlns="{main}"><sheetData>'.encode()
                   + rows + b"</sheetData></worksheet>")
    return path


def test_pieces_give_the_whole_sheets_rows_and_dropped_count_wherever_they_are_cut(
        tmp_path, monkeypatch):
    """Pieces far down a sheet (rows 70,000 on), pieces that end or start in a long run of
    empty rows, a stretch with column A empty, one-cell note rows, and text cells ending in
    their own row's number and a quote (``row 66000"``): the rows kept and the rows dropped
    are those of the whole sheet, for several columns and for one."""
    from pipelines.tables.sheets import Workbook, text_sql

    def text(ref: str, value: str) -> str:
        return f'<c r="{ref}" t="inlineStr"><is><t>{value}</t></is></c>'

    out = ['<row r="1">' + text("A1", "code") + text("B1", "n") + text("C1", "note") + "</row>"]
    for n in range(2, 72_001):
        if 20_000 <= n < 40_000:
            out.append(f'<row r="{n}"/>')           # longer than a piece: pieces of empties
            continue
        cells = "" if 50_000 <= n < 51_000 else text(f"A{n}", f"{n:06d}")
        cells += f'<c r="B{n}"><v>{n}.5</v></c>' if n % 7 else ""
        if n % 1000 == 0:
            cells += text(f"C{n}", f'row {n}"')     # ends in its own row's number and a quote
        out.append(f'<row r="{n}">{cells}</row>')
    out.append('<row r="72005">' + text("A72005", "Source: a footnote") + "</row>")
    path = raw_book(tmp_path / "long.xlsx", "Long", "".join(out).encode())
    con = duckdb.connect()

    def staged(table: str, columns: dict[int, str]) -> tuple[int, list]:
        dropped = Workbook(path).stage(con, "Long", 2, columns, table, create=True)
        return dropped, con.execute(f"SELECT * FROM {text_sql(con, table)}").fetchall()

    three, one = {0: "code", 1: "n", 2: "note"}, {1: "n"}
    whole = staged("w3", three), staged("w1", one)
    monkeypatch.setenv("AHGD_XLSX_STREAM_BYTES", "0")
    monkeypatch.setenv("AHGD_XLSX_PIECE_BYTES", str(256 << 10))
    pieces = staged("p3", three), staged("p1", one)
    assert whole[0][1][0] == ("000002", "2.5", None) and ("066000", "66000.5", 'row 66000"') in \
        whole[0][1]
    filled = [(not 50_000 <= n < 51_000) + (n % 7 > 0) + (n % 1000 == 0)
              for n in range(2, 72_001) if not 20_000 <= n < 40_000]
    assert len(whole[0][1]) == sum(f >= 2 for f in filled)
    assert whole[0][0] == 72_004 - len(whole[0][1])                 # of rows 2 to 72005
    assert pieces == whole


def test_a_sheet_ending_in_formatted_empty_rows_loads_in_pieces_as_it_does_whole(
        tmp_path, monkeypatch):
    """Excel keeps the empty rows below a table when they are formatted (a whole column
    given a style), down to row 1,048,576: the pieces made of those rows alone hold no cell
    in the columns read, and the table and the rows dropped are those of the whole sheet
    (such a piece failed the transform with DuckDB's "must have at least one column")."""
    from pipelines.tables.sheets import Workbook, text_sql

    def text(ref: str, value: str) -> str:
        return f'<c r="{ref}" t="inlineStr"><is><t>{value}</t></is></c>'

    out = ['<row r="1">' + text("A1", "Area code") + text("B1", "Deaths") + "</row>"]
    out += [f'<row r="{n}">' + text(f"A{n}", f"{n:04d}") + f'<c r="B{n}"><v>{n * 3}</v></c>'
            "</row>" for n in range(2, 2002)]
    out.append('<row r="2003">' + text("A2003", "© Commonwealth of Australia 2024") + "</row>")
    out += [f'<row r="{n}" s="1" customFormat="1"><c r="A{n}" s="1"/><c r="B{n}" s="1"/>'
            "</row>" for n in range(2004, 40_001)]
    path = raw_book(tmp_path / "formatted.xlsx", "Deaths", "".join(out).encode())
    con = duckdb.connect()

    def staged(table: str) -> tuple[int, list]:
        dropped = Workbook(path).stage(con, "Deaths", 2, {0: "area", 1: "deaths"}, table,
                                       create=True)
        return dropped, con.execute(f"SELECT * FROM {text_sql(con, table)} ORDER BY ALL"
                                    ).fetchall()

    whole = staged("whole")
    monkeypatch.setenv("AHGD_XLSX_STREAM_BYTES", "0")
    monkeypatch.setenv("AHGD_XLSX_PIECE_BYTES", str(64 << 10))
    assert staged("pieces") == whole
    assert whole[0] == 2 and len(whole[1]) == 2000 and whole[1][0] == ("0002", "6")
    rows, _types = load(tmp_path, path, "{columns: {area: Area code, deaths: Deaths}}")
    assert len(rows) == 2000 and rows[-1] == ("2001", 6003)


def test_numbers_and_dates_are_staged_typed_until_a_piece_gives_text(tmp_path, monkeypatch):
    """Numbers and dates are staged as such (appending text cost DuckDB three times as
    much); a column that is numbers in the first pieces and has an ``np`` in a later one
    (or in the next sheet appended to the same table) is made text then: read as text, the
    rows are those of the whole sheets, cell for cell, as they were when staged as text."""
    import datetime

    from pipelines.tables.sheets import Workbook, text_sql

    def rows(start: int, text_at: int, column: int) -> list[list]:
        out: list[list] = [["code", "deaths", "rate", "updated"]]
        for i in range(start, start + 2000):
            out.append([f"{i:05d}", i * 7, round(i / 7, 3),
                        datetime.datetime(2024, 1, 1 + i % 28, 9 if i % 5 == 0 else 0)])
            if i == text_at:
                out[-1][column] = "np"
        return out

    # sheet A: "deaths" numbers until row 1700 (a later piece); sheet B: "rate" text at once
    path = book(tmp_path / "typed.xlsx", {"A": rows(0, 1700, 1), "B": rows(5000, 5000, 2)})
    columns = {0: "code", 1: "deaths", 2: "rate", 3: "updated"}

    def staged(table: str) -> tuple[int, list, dict]:
        con = duckdb.connect()
        dropped = Workbook(path).stage(con, "A", 2, columns, table, create=True)
        first = dict(con.execute(f"SELECT column_name, data_type FROM duckdb_columns() "
                                 f"WHERE table_name = '{table}'").fetchall())
        dropped += Workbook(path).stage(con, "B", 2, columns, table, create=False)
        return dropped, con.execute(f"SELECT * FROM {text_sql(con, table)}").fetchall(), first

    whole = staged("w")
    monkeypatch.setenv("AHGD_XLSX_STREAM_BYTES", "0")
    monkeypatch.setenv("AHGD_XLSX_PIECE_BYTES", str(16 << 10))
    pieces = staged("p")
    assert pieces[:2] == whole[:2] and whole[0] == 0 and len(whole[1]) == 4000
    # after sheet A (in pieces or whole): "deaths" made text, the others as they came
    assert pieces[2] == whole[2] == {"code": "VARCHAR", "deaths": "VARCHAR", "rate": "DOUBLE",
                                     "updated": "TIMESTAMP_MS"}
    got = {r[0]: r[1:] for r in pieces[1]}
    assert got["00001"] == ("7", "0.143", "2024-01-02")
    assert got["00005"] == ("35", "0.714", "2024-01-06 09:00:00")
    assert got["01700"][0] == "np" and got["01699"] == ("11893", "242.714", "2024-01-20")
    assert got["05000"][1] == "np" and got["05001"] == ("35007", "714.429", "2024-01-18")


def test_a_sheet_that_opens_but_does_not_load_says_what_is_wrong(tmp_path, monkeypatch):
    """A sheet whose XML breaks below the rows the header is looked for in (a cell not
    closed): an InputError naming the sheet and the file, not fastexcel's error, whether
    the sheet is read whole or in pieces (the broken one read in a thread)."""
    from pipelines.errors import InputError
    from pipelines.tables.sheets import Workbook

    rows = [('<row r="1"><c r="A1" t="inlineStr"><is><t>area</t></is></c>'
             '<c r="B1" t="inlineStr"><is><t>deaths</t></is></c></row>')]
    rows += [f'<row r="{n}"><c r="A{n}"><v>{n}</v></c><c r="B{n}"><v>1</v></c></row>'
             for n in range(2, 200)]
    rows[150] = rows[150].replace("</c>", "", 1)
    path = raw_book(tmp_path / "broken.xlsx", "Deaths", "".join(rows).encode())
    book = Workbook(path)
    assert book.top_rows("Deaths", 60)[1] == ["2", "1"]      # the top reads
    with pytest.raises(InputError) as err:
        book.stage(duckdb.connect(), "Deaths", 2, {0: "area", 1: "deaths"}, "t", create=True)
    assert str(err.value).startswith("sheet 'Deaths' of broken.xlsx cannot be read (")
    assert str(err.value).endswith("; save it again as .xlsx")
    monkeypatch.setenv("AHGD_XLSX_STREAM_BYTES", "0")
    monkeypatch.setenv("AHGD_XLSX_PIECE_BYTES", "1K")
    with pytest.raises(InputError) as err:
        book.stage(duckdb.connect(), "Deaths", 2, {0: "area", 1: "deaths"}, "t", create=True)
    assert str(err.value).startswith("sheet 'Deaths' of broken.xlsx cannot be read (")


def test_bundled_drop_folders_take_spreadsheets_and_compressed_files(tmp_path):
    from ahgd_daemon.dropfolder import Folder, glob_alternatives
    from pipelines.config import load_config

    config = load_config([Path(__file__).resolve().parents[2] / "pipelines" / "ahgd" / "config"
                          / "master.yaml"], state_dir=tmp_path)
    for name in ("seifa_sa2", "mortality_regions"):
        [trigger] = config.pipelines[name].file.triggers
        folder = Folder(name, tmp_path, trigger.pattern)
        taken = [n for n in ("a.csv", "a.csv.gz", "SEIFA 2021.xlsx", "b.xls", "c.ods", "d.zip",
                             "notes.txt", "a.csv.part", "x.pdf") if folder.matches(tmp_path / n)]
        assert taken == ["a.csv", "a.csv.gz", "SEIFA 2021.xlsx", "b.xls", "c.ods", "d.zip"]
    assert glob_alternatives("a{b,c{d,e}}f") == ["abf", "acdf", "acef"]
    assert glob_alternatives("x{y}") == ["x{y}"] and glob_alternatives("*.{a") == ["*.{a"]


def test_required_columns_read_compressed_files_and_spreadsheets_from_their_top(tmp_path):
    from ahgd_daemon.inputcheck import required_columns_problem

    gz = tmp_path / "deaths.csv.gz"
    gz.write_bytes(gzip.compress(b"area,deaths\n0800,1\n"))
    assert required_columns_problem(gz, ["area", "deaths"], "utf-8", ",") is None
    assert required_columns_problem(gz, ["area", "rate"], "utf-8", ",") == (
        "missing required column(s) rate (the header has: area, deaths)")
    path = book(tmp_path / "deaths.xlsx", {"Contents": [["Contents"], ["Table 3", "Deaths"]],
                                           "Deaths": DEATHS})
    assert required_columns_problem(path, ["Area code", "Area"], "utf-8", ",") is None
    assert required_columns_problem(path, ["Area code", "Postcode"], "utf-8", ",") == (
        "missing required column(s) Postcode (the header has: Area code, Area, Deaths, , Note)")


def ods(path: Path, sheets: dict[str, list[list]]) -> Path:
    """A minimal OpenDocument spreadsheet (no writer for it is installed): text and numbers."""
    from xml.sax.saxutils import escape

    def cell(v) -> str:
        if v is None:
            return "<table:table-cell/>"
        if isinstance(v, (int, float)):
            return (f'<table:table-cell office:value-type="float" office:value="{v}">'
                    f"<text:p>{v}</text:p></table:table-cell>")
        return (f'<table:table-cell office:value-type="string"><text:p>{escape(v)}</text:p>'
                "</table:table-cell>")

    body = "".join(f'<table:table table:name="{name}">' + "".join(
        "<table:table-row>" + "".join(cell(v) for v in row) + "</table:table-row>"
        for row in rows) + "</table:table>" for name, rows in sheets.items())
    ns = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
          'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
          'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"')
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet",
                   compress_type=zipfile.ZIP_STORED)
        z.writestr("content.xml", f'<?xml version="1.0" encoding="UTF-8"?><office:document-'
                   f'content {ns} office:version="1.2"><office:body><office:spreadsheet>{body}'
                   "</office:spreadsheet></office:body></office:document-content>")
        z.writestr("META-INF/manifest.xml", '<?xml version="1.0" encoding="UTF-8"?><manifest:'
                   'manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0"'
                   ' manifest:version="1.2"><manifest:file-entry manifest:full-path="/" manifest:'
                   'media-type="application/vnd.oasis.opendocument.spreadsheet"/><manifest:file-'
                   'entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
                   "</manifest:manifest>")
    return path


def test_an_ods_workbook_loads_as_the_xlsx_does(tmp_path):
    two_line = [list(r) for r in DEATHS]
    two_line[3][3] = "Deaths"          # no merged cells here: the group is named over both
    path = ods(tmp_path / "deaths.ods", {"Contents": [["Contents"]], "Deaths": two_line})
    assert load(tmp_path, path, MAPPING)[0] == EXPECTED


def test_a_workbook_named_as_another_kind_loads_by_what_it_is(tmp_path):
    """Kinds are told by a file's bytes: an .xlsx named .xls (a portal's download, a renamed
    copy) and an .ods named .xlsx load, where fastexcel, given the name, went by it ("Xls
    error: Cfb error: Invalid OLE ...; save it again as .xlsx")."""
    two_line = [list(r) for r in DEATHS]
    two_line[3][3] = "Deaths"
    xlsx = book(tmp_path / "deaths.xls", {"Deaths": DEATHS}, merge="C4:D4")
    assert load(tmp_path, xlsx, MAPPING, "xls")[0] == EXPECTED
    opendoc = ods(tmp_path / "deaths.xlsx", {"Contents": [["Contents"]], "Deaths": two_line})
    assert load(tmp_path, opendoc, MAPPING, "ods")[0] == EXPECTED


def test_a_web_page_or_xml_spreadsheet_named_xls_is_refused_saying_what_it_is(tmp_path):
    """'Export to Excel' on many web sites sends an HTML table named .xls, and older tools
    Excel's XML Spreadsheet 2003: read as a CSV, the first was refused as lacking columns,
    listing '<html xmlns:o=...' as the file's; both are now named for what they are."""
    from pipelines import TableExtractor
    from pipelines.ahgd import seifa

    page = tmp_path / "SEIFA export.xls"
    page.write_text('<html xmlns:o="urn:schemas-microsoft-com:office:office">\n<body><table>'
                    "<tr><td>SA2_Code_2021</td><td>IRSD_Score</td></tr></table></body></html>")
    xml = tmp_path / "deaths.xls"
    xml.write_text('<?xml version="1.0"?>\n<?mso-application progid="Excel.Sheet"?>\n'
                   '<Workbook xmlns="urn:schemas-microsoft-com:office:spreadsheet">'
                   "</Workbook>")
    assert seifa.check_input(page).startswith(
        "SEIFA export.xls is a web page (HTML), not a CSV file or a workbook")
    problem = TableExtractor().check_input(xml)
    assert problem.startswith("deaths.xls is an XML Spreadsheet 2003 file, not a CSV file")
    assert "save it as .xlsx or as CSV UTF-8" in problem


def test_the_piece_sizes_from_the_environment_take_units_and_a_typo_is_said_not_obeyed(
        monkeypatch, caplog):
    from pipelines.tables import xlsxstream

    monkeypatch.setenv("AHGD_XLSX_STREAM_BYTES", "4G")
    monkeypatch.setenv("AHGD_XLSX_PIECE_BYTES", "16MiB")
    assert (xlsxstream.stream_bytes(), xlsxstream.piece_bytes()) == (4 << 30, 16 << 20)
    monkeypatch.setenv("AHGD_XLSX_STREAM_BYTES", "0")     # 0: every sheet in pieces
    assert xlsxstream.stream_bytes() == 0
    monkeypatch.setenv("AHGD_XLSX_STREAM_BYTES", "4 gigs")
    with caplog.at_level("WARNING", logger="pipelines.tables.xlsxstream"):
        assert xlsxstream.stream_bytes() == xlsxstream.STREAM_BYTES
    assert "AHGD_XLSX_STREAM_BYTES='4 gigs' is not a size" in caplog.text
    assert "64M, 4G" in caplog.text
