"""The bundled CSVs written again in the layouts publishers ship (issue 16): test fixtures.

    seifa_cube(path, rows)          the ABS SEIFA data cube: Contents, one index per sheet
                                    (title rows, a two-line header, footnotes, copyright)
    mort_book(path, rows)           an AIHW MORT book: Contents, Table 1 (title rows,
                                    header, data, notes), Table 2 (causes: another table)
    abs_csv(path, rows, indexes)    the ABS CSV names (SA2_Code_2021, IRSD_Decile_Australia...)

``rows`` are the bundled CSVs' rows as :func:`tests.ahgd_truth.read_rows` reads them;
spreadsheets are written with openpyxl, numbers stored as numbers unless ``as_text``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

from tests.ahgd_truth import INDEXES

LONG = {"irsd": "Index of Relative Socio-economic Disadvantage",
        "irsad": "Index of Relative Socio-economic Advantage and Disadvantage",
        "ier": "Index of Economic Resources", "ieo": "Index of Education and Occupation"}
COPYRIGHT = "© Commonwealth of Australia 2023"


def _number(text: str, as_text: bool = False):
    """A published cell as a spreadsheet holds it: a number (or text), None when blank."""
    if text == "":
        return None
    if as_text:
        return text
    plain = text.replace(",", "")
    return float(plain) if "." in plain else int(plain)


def _ranks(rows: Sequence[dict[str, str]], idx: str) -> dict[str, int]:
    scored = sorted((float(r[f"{idx}_score"]), r["sa2_code_2021"]) for r in rows
                    if r[f"{idx}_score"])
    return {code: i + 1 for i, (_s, code) in enumerate(scored)}


def seifa_cube(path: Path, rows: Sequence[dict[str, str]], indexes: Iterable[str] = INDEXES,
               *, suppressed: str = "-", as_text: bool = False) -> Path:
    """``Statistical Area Level 2, Indexes, SEIFA 2021.xlsx`` as ABS lays it out."""
    from openpyxl import Workbook

    book = Workbook()
    contents = book.active
    contents.title = "Contents"
    contents.append(["Australian Bureau of Statistics"])
    contents.append(["2033.0.55.001 Socio-Economic Indexes for Areas (SEIFA), Australia, 2021"])
    contents.append([])
    contents.append(["Contents"])
    for n, idx in enumerate(indexes, 1):
        contents.append([None, f"Table {n}", f"Statistical Area Level 2 (SA2) {LONG[idx]}, 2021"])
    for n, idx in enumerate(indexes, 1):
        ranks = _ranks(rows, idx)
        sheet = book.create_sheet(f"Table {n}")
        sheet.append(["Australian Bureau of Statistics"])
        sheet.append(["Socio-Economic Indexes for Areas (SEIFA), Australia, 2021"])
        sheet.append([f"Table {n} Statistical Area Level 2 (SA2) {LONG[idx]}, 2021"])
        sheet.append([])
        sheet.append(["2021 Statistical Area Level 2 (SA2) 9-Digit Code",
                      "2021 Statistical Area Level 2 (SA2) Name", "Score",
                      "Ranking within Australia", None, None, "Usual Resident Population"])
        sheet.merge_cells(start_row=5, end_row=5, start_column=4, end_column=6)
        sheet.append([None, None, None, "Rank", "Decile", "Percentile", None])
        total = len(ranks)
        for r in rows:
            score = r[f"{idx}_score"]
            rank = ranks.get(r["sa2_code_2021"])
            cells = [_number(r["sa2_code_2021"], as_text), r["sa2_name_2021"],
                     _number(score, as_text) if score else suppressed,
                     rank if rank else suppressed,
                     _number(r[f"{idx}_decile"], as_text) if score else suppressed,
                     max(1, -(-rank * 100 // total)) if rank else suppressed,
                     _number(r["usual_resident_population"], as_text)]
            sheet.append(cells)
        sheet.append([])
        sheet.append(["- Score not published: the SA2 has too few usual residents."])
        sheet.append([COPYRIGHT])
    book.save(path)
    return path


MORT_HEADER = {"mort": "MORT code", "category": "Category", "geography": "Geography",
               "YEAR": "Year", "SEX": "Sex", "deaths": "Number of deaths",
               "population": "Population", "crude_rate_per_100000": "Crude rate (per 100,000)",
               "age_standardised_rate_per_100000": "Age-standardised rate (per 100,000)",
               "rate_ratio": "Rate ratio", "premature_deaths": "Premature deaths",
               "premature_deaths_percent": "Premature deaths (per cent)",
               "premature_deaths_asr_per_100000": "Premature deaths ASR (per 100,000)",
               "potential_years_of_life_lost": "Potential years of life lost",
               "pyll_rate_per_1000": "PYLL rate (per 1,000)",
               "potentially_avoidable_deaths": "Potentially avoidable deaths",
               "pad_percent": "PAD (per cent)", "pad_asr_per_100000": "PAD ASR (per 100,000)",
               "median_age": "Median age at death"}
TEXT = ("mort", "category", "geography", "SEX")


def mort_book(path: Path, rows: Sequence[dict[str, str]], *, header: dict[str, str] | None = None,
              as_text: bool = False, blank: str | None = "n.p.", split: int = 0) -> Path:
    """An AIHW MORT book: Table 1 below title rows, with notes and a copyright line below
    (``split``: the rows from there on in a second sheet, "Table 1 (continued)")."""
    from openpyxl import Workbook

    header = header or MORT_HEADER
    book = Workbook()
    contents = book.active
    contents.title = "Contents"
    contents.append(["Mortality Over Regions and Time (MORT) books"])
    contents.append(["Table 1", "General record of deaths"])
    contents.append(["Table 2", "Leading causes of death"])
    parts = [("Table 1", rows[:split or len(rows)])]
    if split:
        parts.append(("Table 1 (continued)", rows[split:]))
    for name, part in parts:
        sheet = book.create_sheet(name)
        sheet.append(["Mortality Over Regions and Time (MORT) books, 2019-2023"])
        sheet.append([f"{name}: General record of deaths by geography, year and sex"])
        sheet.append([])
        sheet.append([header[c] for c in rows[0]])
        for r in part:
            sheet.append([v if c in TEXT else (_number(v, as_text) if v else blank)
                          for c, v in r.items()])
        sheet.append([])
        sheet.append(["Notes: n.p. not published (fewer than 5 deaths)."])
        sheet.append(["Source: AIHW National Mortality Database."])
        sheet.append([COPYRIGHT])
    causes = book.create_sheet("Table 2")
    causes.append(["Table 2: Leading causes of death"])
    causes.append(["mort", "category", "geography", "YEAR", "SEX", "cause", "deaths"])
    causes.append(["STE1", "State and territory", "New South Wales", 2019, "Persons",
                   "Coronary heart disease", 5000])
    book.save(path)
    return path


ABS_CSV = {"sa2_code_2021": "SA2_Code_2021", "sa2_name_2021": "SA2_Name_2021"}


def abs_csv(path: Path, rows: Sequence[dict[str, str]], indexes: Iterable[str] = ("irsd",),
            *, encoding: str = "utf-8", newline: str = "\n") -> Path:
    """The ABS CSV names: SA2_Code_2021, SA2_Name_2021, IRSD_Score, IRSD_Decile_Australia,
    IRSD_Rank_Australia ..., one index or more, URP last."""
    indexes = list(indexes)
    header = ["SA2_Code_2021", "SA2_Name_2021"]
    for idx in indexes:
        up = idx.upper()
        header += [f"{up}_Score", f"{up}_Rank_Australia", f"{up}_Decile_Australia"]
    header.append("URP")
    ranks = {idx: _ranks(rows, idx) for idx in indexes}
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f, lineterminator=newline)
        w.writerow(header)
        for r in rows:
            line = [r["sa2_code_2021"], r["sa2_name_2021"]]
            for idx in indexes:
                rank = ranks[idx].get(r["sa2_code_2021"])
                line += [r[f"{idx}_score"], rank or "", r[f"{idx}_decile"]]
            line.append(r["usual_resident_population"])
            w.writerow(line)
    return path
