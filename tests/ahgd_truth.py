"""What the bundled pipelines must load, computed from the raw files with csv alone.

Never read back from the pipelines' own output: these are the independent
truth that warehouse values are compared with (tests/pipelines, tests/daemon).
"""

from __future__ import annotations

import csv
from pathlib import Path

import duckdb

PKG = Path(__file__).resolve().parents[1] / "pipelines" / "ahgd"
DATA = PKG / "data"
SEIFA_CSV, MORT_CSV = DATA / "seifa_2021_sa2.csv", DATA / "aihw_mort_table1.csv"
INDEXES = ("irsd", "irsad", "ier", "ieo")
MORT_COUNTS = ("deaths", "population", "premature_deaths", "potential_years_of_life_lost",
               "potentially_avoidable_deaths")
MORT_RATES = ("crude_rate_per_100000", "age_standardised_rate_per_100000", "rate_ratio",
              "premature_deaths_percent", "premature_deaths_asr_per_100000",
              "pyll_rate_per_1000", "pad_percent", "pad_asr_per_100000", "median_age")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def count(text: str) -> int | None:
    """A published whole number ("55,374"), or None for a blank (suppressed) cell."""
    return int(text.replace(",", "")) if text else None


def rate(text: str) -> float | None:
    return float(text) if text else None


def level_of(row: dict[str, str]) -> str:
    """The geography level as the MORT file's category column names it."""
    for word, level in (("(SA3)", "SA3"), ("(SA4)", "SA4"), ("(LGA)", "LGA"), ("(PHN)", "PHN"),
                        ("(GCCSA)", "GCCSA"), ("State and", "STE"), ("Remoteness", "REM"),
                        ("Socioeconomic", "SEG")):
        if word in row["category"]:
            return level
    raise AssertionError(row["category"])


def table_by(state: Path, table: str, *key: str) -> dict[tuple, dict]:
    """Every row of a warehouse table, by ``key``."""
    con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
    try:
        rel = con.table(table)
        cols = rel.columns
        return {tuple(r[cols.index(k)] for k in key): dict(zip(cols, r)) for r in rel.fetchall()}
    finally:
        con.close()


def seifa_mismatches(row: dict, raw: dict[str, str]) -> list[str]:
    """How a seifa_sa2 row differs from its raw CSV row (a column the file lacks is NULL)."""
    def cell(column: str) -> str:   # a column the file does not have loads as NULL
        return raw.get(column) or ""

    want = {"sa2_name": raw.get("sa2_name_2021"),
            "usual_resident_population": count(cell("usual_resident_population"))}
    for i in INDEXES:
        want[f"{i}_score"] = rate(cell(f"{i}_score"))
        want[f"{i}_decile"] = count(cell(f"{i}_decile"))
    code = raw["sa2_code_2021"]
    want.update(state_code=code[0], sa4_code=code[:3], sa3_code=code[:5])
    return [f"{code}.{k}: warehouse {row[k]!r}, file {v!r}" for k, v in want.items() if row[k] != v]


def mortality_mismatches(row: dict, raw: dict[str, str]) -> list[str]:
    """How a mortality_region row differs from its raw MORT row."""
    want = {"geography_level": level_of(raw), "area_name": raw["geography"],
            **{c: count(raw[c]) for c in MORT_COUNTS}, **{c: rate(raw[c]) for c in MORT_RATES}}
    where = f"{raw['mort']} {raw['YEAR']} {raw['SEX']}"
    return [f"{where}.{k}: warehouse {row[k]!r}, file {v!r}" for k, v in want.items() if row[k] != v]


def latest_sa3_persons(mort: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """The latest Persons row of each SA3 (``SA3xxxxx``): what the profile takes."""
    latest: dict[str, dict[str, str]] = {}
    for r in mort:
        if r["mort"].startswith("SA3") and r["SEX"] == "Persons":
            if r["mort"] not in latest or int(r["YEAR"]) > int(latest[r["mort"]]["YEAR"]):
                latest[r["mort"]] = r
    return latest


def profile_mismatches(row: dict, seifa: dict[str, str],
                       latest: dict[str, dict[str, str]]) -> list[str]:
    """How a sa2_health_profile row differs from its SEIFA row and its SA3's mortality."""
    code = seifa["sa2_code_2021"]
    sa3 = latest[f"SA3{code[:5]}"]
    want = {"sa2_name": seifa["sa2_name_2021"], "irsd_score": rate(seifa["irsd_score"]),
            "irsd_decile": count(seifa["irsd_decile"]),
            "usual_resident_population": count(seifa["usual_resident_population"]),
            "sa3_mortality_year": int(sa3["YEAR"]),
            "sa3_age_standardised_rate_per_100000": rate(sa3["age_standardised_rate_per_100000"]),
            "sa3_premature_deaths_asr_per_100000": rate(sa3["premature_deaths_asr_per_100000"]),
            "sa3_potentially_avoidable_deaths": count(sa3["potentially_avoidable_deaths"])}
    return [f"{code}.{k}: warehouse {row[k]!r}, files {v!r}" for k, v in want.items() if row[k] != v]
