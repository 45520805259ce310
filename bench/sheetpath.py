"""The spreadsheet path of the data path benchmark: the same data read from .xlsx and from CSV.

    python bench/datapath.py --spreadsheets [--reps 95] [--repeat 1] [--cache DIR]

Two workbooks, built once into ``--cache`` (default ``/tmp/ahgd-bench-cache``) and
reused:

* the ABS SEIFA data cube layout: all 2,293 SA2s of the bundled CSV in four sheets,
  one index each (title rows, a two-line header, footnotes), written with openpyxl
  (tests/publisher_layouts.py); read by ``seifa_sa2``, against the bundled CSV;
* a MORT book of about 1.5 M rows (the rows of ``datapath.generate``): Table 1
  below title rows, continued on a second sheet (a sheet holds at most 1,048,576
  rows), written as raw sheet XML (openpyxl would take many minutes); read by
  ``mortality_regions``, against the generated CSV.

Each is run through the bundled pipeline with the process executor on a fresh
state directory; prints the wall times (median of ``--repeat``), their ratio,
each stage's time and the workers' peak RSS.  Targets: spreadsheet <= 3x CSV,
peak RSS <= 1 GB.  Both loads are checked to hold the same rows.
"""

from __future__ import annotations

import statistics
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from pipelines.tables.xlsxstream import column_letters

SHEET_ROWS = 1_048_576
_CT = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Types xmlns="http://schemas.'
       'openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="'
       'application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" '
       'ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="'
       'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>{sheets}'
       '</Types>')
_SHEET_CT = ('<Override PartName="/xl/worksheets/sheet{n}.xml" ContentType="application/vnd.'
             'openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>')
_RELS = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Relationships xmlns="http://'
         'schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="'
         'http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
         'Target="xl/workbook.xml"/></Relationships>')
_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_R = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"



def _text_cell(ref: str, text: str) -> str:
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<c r="{ref}" t="inlineStr"><is><t>{esc}</t></is></c>'


def write_xlsx(path: Path, sheets: list[tuple[str, list[list[str]], Callable[[int], Iterator[str]]]]
               ) -> None:
    """A minimal .xlsx: each sheet's text rows on top (titles, header), then the XML rows a
    generator gives (it is told the sheet row number its first row gets)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("[Content_Types].xml", _CT.format(sheets="".join(
            _SHEET_CT.format(n=i + 1) for i in range(len(sheets)))))
        z.writestr("_rels/.rels", _RELS)
        listed = "".join(f'<sheet name="{name}" sheetId="{i + 1}" r:id="rId{i + 1}"/>'
                         for i, (name, _, _) in enumerate(sheets))
        z.writestr("xl/workbook.xml",
                   f'<workbook xmlns="{_MAIN}" xmlns:r="{_R}"><sheets>{listed}</sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels", '<Relationships xmlns="http://schemas.'
                   'openxmlformats.org/package/2006/relationships">' + "".join(
                       f'<Relationship Id="rId{i + 1}" Type="{_R}/worksheet" '
                       f'Target="worksheets/sheet{i + 1}.xml"/>' for i in range(len(sheets)))
                   + "</Relationships>")
        for i, (_name, top, body) in enumerate(sheets):
            with z.open(f"xl/worksheets/sheet{i + 1}.xml", "w", force_zip64=True) as f:
                f.write(f'<worksheet xmlns="{_MAIN}"><sheetData>'.encode())
                for r, cells in enumerate(top, 1):
                    f.write((f'<row r="{r}">' + "".join(
                        _text_cell(f"{column_letters(c)}{r}", v) for c, v in enumerate(cells) if v)
                        + "</row>").encode())
                chunk: list[str] = []
                for xml in body(len(top) + 1):
                    chunk.append(xml)
                    if len(chunk) >= 20000:
                        f.write("".join(chunk).encode())
                        chunk = []
                f.write("".join(chunk).encode())
                f.write(b"</sheetData></worksheet>")


def _row_xml_sql(columns: list[str], text: set[str]) -> str:
    """SQL making one ``<row>`` of XML per row of ``src`` (numbers as numbers, a blank cell
    left out, text inline); ``n`` is the row's number in the sheet."""
    cells = []
    for i, c in enumerate(columns):
        ref = f"'{column_letters(i)}' || n"
        q = f'"{c}"'
        if c in text:
            esc = f"replace(replace(replace({q}, '&', '&amp;'), '<', '&lt;'), '>', '&gt;')"
            cells.append(f"""CASE WHEN coalesce({q}, '') <> '' THEN '<c r="' || {ref} || """
                         f"""'" t="inlineStr"><is><t>' || {esc} || '</t></is></c>' ELSE '' END""")
        else:
            num = f"replace({q}, ',', '')"
            cells.append(f"""CASE WHEN coalesce({q}, '') <> '' THEN '<c r="' || {ref} || """
                         f"""'"><v>' || {num} || '</v></c>' ELSE '' END""")
    return "'<row r=\"' || n || '\">' || " + " || ".join(cells) + " || '</row>'"


def mort_workbook(csv_path: Path, target: Path) -> int:
    """The rows of ``csv_path`` (a generated MORT Table 1) as a MORT book; the row count."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW src AS SELECT row_number() OVER () - 1 AS i, * FROM "
                f"read_csv('{csv_path}', all_varchar = true, header = true)")
    columns = [r[0] for r in con.execute("DESCRIBE src").fetchall()][1:]
    total = con.execute("SELECT count(*) FROM src").fetchone()[0]
    top = [["Mortality Over Regions and Time (MORT) books"],
           ["Table 1: General record of deaths by geography, year and sex"], [], columns]
    per_sheet = SHEET_ROWS - len(top) - 10
    xml = _row_xml_sql(columns, {"mort", "category", "geography", "SEX"})

    def part(lo: int, hi: int) -> Callable[[int], Iterator[str]]:
        def rows(first: int) -> Iterator[str]:
            cur = con.execute(f"SELECT {xml} FROM ("
                              f"SELECT *, i - $lo + $first AS n FROM src WHERE i >= $lo AND "
                              f"i < $hi ORDER BY i)", {"lo": lo, "hi": hi, "first": first})
            while batch := cur.fetchmany(50000):
                for (line,) in batch:
                    yield line
        return rows

    sheets = []
    for k, lo in enumerate(range(0, total, per_sheet)):
        name = "Table 1" if k == 0 else f"Table 1 ({k + 1})"
        sheets.append((name, top, part(lo, min(total, lo + per_sheet))))
    write_xlsx(target, sheets)
    con.close()
    return total


def seifa_workbook(target: Path, repo: Path) -> int:
    import sys

    sys.path.insert(0, str(repo))
    from tests.ahgd_truth import SEIFA_CSV, read_rows
    from tests.publisher_layouts import seifa_cube

    rows = read_rows(SEIFA_CSV)
    seifa_cube(target, rows)
    return len(rows)


def compare(name: str, runs: dict[str, list[tuple[float, list[tuple]]]]) -> None:
    """Print the CSV and spreadsheet runs of one pipeline side by side."""
    med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    print(f"{name}: CSV {med['csv']:.2f} s, spreadsheet {med['xlsx']:.2f} s, ratio "
          f"{med['xlsx'] / med['csv']:.2f} (target <= 3)")
    for kind, done in runs.items():
        stages = ", ".join(f"{s} {w:.2f} s ({c:.1f} s CPU, {p or 0:.0f} MB)"
                           for s, w, c, p, _r in done[0][1])
        peak = max(p or 0 for _w, rep in done for _s, _w2, _c, p, _r in rep)
        print(f"  {kind:<5} {stages}; worker peak RSS {peak:.0f} MB (target <= 1024)")


__all__ = ["write_xlsx", "mort_workbook", "seifa_workbook", "compare"]
