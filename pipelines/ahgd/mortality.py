"""``mortality_regions``: AIHW MORT (Mortality Over Regions and Time) books, Table 1.

    extract  -> MortalityExtractor    header matched, file hashed
    transform-> MortalityTransformer  counts and rates parsed, area code split into level + code
    validate -> MortalityValidator    parse errors, one row per (level, area, year, sex),
                                      level agrees with the file's category
    load     -> MortalityLoader       warehouse table mortality_region, upsert by that key

The ``mort`` column carries the geography in its prefix: ``STE01``,
``LGA10050``, ``SA310102`` (SA3 10102), ``SA4101``, ``PHN101``,
``GCC1GSYD`` (GCCSA 1GSYD), ``REM1`` (remoteness area), ``SEG1``
(socioeconomic group).  AIHW writes the totals and unknowns of SA3 and SA4
without the level digit (``SA999999`` = SA3 "Australia (total)", ``SA8888`` =
SA4 "Unknown/missing"); a 6-character code after ``SA`` is an SA3, a
4-character one an SA4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import quote
from pipelines.tables.sheets import number_column
from .common import (SOURCE_SHA, ParsedColumns, SourceExtractor, duplicate_key_problems,
                     parse_error_problems, read_input, suppressed_param)
from .headers import Column, Layout
from .warehouse import WarehouseLoader

LEVELS = ("STE", "LGA", "SA3", "SA4", "PHN", "GCCSA", "REM", "SEG")
KEY = ("geography_level", "area_code", "year", "sex")
AREA_CODE = "^(STE|LGA|SA3|SA4|PHN|GCC|REM|SEG|SA)([0-9A-Z]+)$"
#: words of the file's ``category`` column -> the level its codes must have
CATEGORY_LEVEL = {"(SA3)": "SA3", "(SA4)": "SA4", "(LGA)": "LGA", "(PHN)": "PHN",
                  "(GCCSA)": "GCCSA", "State and territory": "STE", "Remoteness area": "REM",
                  "Socioeconomic group": "SEG"}
SEXES = {"males": "Males", "male": "Males", "m": "Males", "females": "Females",
         "female": "Females", "f": "Females", "persons": "Persons", "person": "Persons",
         "p": "Persons", "total": "Persons"}

#: synonyms are phrases matched by their words (case, punctuation, years and "of"... do
#: not matter); docs/bundled-pipelines.md lists them
INDICATORS = (
    Column("deaths", ("number of deaths", "deaths number"), required=True, kind="integer"),
    Column("population", ("estimated resident population", "erp"), required=True,
           kind="integer"),
    Column("crude_rate_per_100000", ("crude rate", "crude death rate"), kind="number"),
    Column("age_standardised_rate_per_100000", (
        "age standardized rate per 100000", "age standardised rate", "age standardized rate",
        "asr per 100000", "age standardised death rate"), required=True, kind="number"),
    Column("rate_ratio", (), kind="number"),
    Column("premature_deaths", (), kind="integer"),
    Column("premature_deaths_percent", ("premature deaths per cent",),
           kind="number"),
    Column("premature_deaths_asr_per_100000", (
        "premature deaths asr", "premature deaths age standardised rate"), kind="number"),
    Column("potential_years_of_life_lost", ("pyll",), kind="integer"),
    Column("pyll_rate_per_1000", ("pyll rate",), kind="number"),
    Column("potentially_avoidable_deaths", ("pad",), kind="integer"),
    Column("pad_percent", ("pad per cent", "potentially avoidable deaths per cent",
                           "potentially avoidable deaths percent"), kind="number"),
    Column("pad_asr_per_100000", ("pad asr", "potentially avoidable deaths asr",
                                  "potentially avoidable deaths age standardised rate"),
           kind="number"),
    Column("median_age", ("median age at death",), kind="number"),
)
LAYOUT = Layout("an AIHW MORT Table 1 table", (
    Column("mort", ("area code", "mort code", "geography code"), required=True),
    Column("category", ("geography type", "area type")),
    Column("geography", ("area name", "geography name", "name")),
    Column("year", (), required=True, kind="integer"),
    Column("sex", (), required=True),
    *INDICATORS,
), key=("mort", "year", "sex"))


def check_input(path: Path) -> str | None:
    """For a drop folder's ``input_check``: why ``path`` is not a MORT Table 1 table (from its
    top alone), or None."""
    return MortalityExtractor().check_input(path)


def area_code_sql(code: str) -> dict[str, str]:
    """SQL splitting an AIHW area code (``SA310102``) into geography_level and area_code."""
    parts = f"regexp_extract({code}, '{AREA_CODE}', ['prefix', 'rest'])"
    return {
        "geography_level": (
            f"CASE {parts}.prefix WHEN '' THEN NULL WHEN 'GCC' THEN 'GCCSA' "
            f"WHEN 'SA' THEN CASE length({parts}.rest) WHEN 6 THEN 'SA3' WHEN 4 THEN 'SA4' END "
            f"ELSE {parts}.prefix END"),
        "area_code": f"nullif({parts}.rest, '')",
    }


def sex_sql(raw: str) -> str:
    whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in SEXES.items())
    return f"CASE lower(trim({raw})) {whens} ELSE trim({raw}) END"


def category_level_sql(category: str) -> str:
    whens = " ".join(f"WHEN contains({category}, '{k}') THEN '{v}'"
                     for k, v in CATEGORY_LEVEL.items())
    return f"CASE {whens} END"


class MortalityExtractor(SourceExtractor):
    """Identify a MORT Table 1 table (see :class:`~pipelines.ahgd.common.SourceExtractor`):
    of a workbook, the first sheet that is one (a MORT book's Table 1), and the sheets after
    it that continue it (the same columns; a sheet holds at most 1,048,576 rows)."""

    all_sheets = "same"

    layout = LAYOUT


class MortalityTransformer:
    """One SQL statement: tidy rows keyed by (geography_level, area_code, year, sex).

    ``suppressed`` lists the cell values, besides blank, read as "not
    published" (default ``n.p.``, ``np``).
    """

    def __init__(self, suppressed: list[str] | None = None):
        self.suppressed = suppressed_param(suppressed)

    def transform(self, context: Any) -> Any:
        manifest = context.get_output("extract")
        read = read_input(context, LAYOUT)
        source, params = read.sql, read.params
        present = set(read.columns)
        numeric = [LAYOUT.column("year"), *INDICATORS]
        numbers = [n for n in read.numbers if n in {c.name for c in numeric}]
        parsed = ParsedColumns(numeric, numbers)
        text = {n: f"trim({quote(n)})" if n in present else "NULL::VARCHAR"
                for n in ("category", "geography")}
        raw = ", ".join(f"{quote(c.name) if c.name in present else 'NULL::VARCHAR'} AS "
                        f"{quote(c.name)}" for c in numeric)
        raw += "".join(f", {quote(number_column(n))}" for n in numbers)
        src = (f"SELECT upper(trim(mort)) AS mort_code, {text['category']} AS category, "
               f"{text['geography']} AS area_name, {sex_sql('sex')} AS sex, {raw} FROM {source}")
        code = area_code_sql("mort_code")
        kind = ("CASE WHEN area_name IS NULL THEN NULL WHEN starts_with(lower(area_name), "
                "'australia (total)') THEN 'total' WHEN starts_with(lower(area_name), 'unknown') "
                "THEN 'unknown' ELSE 'area' END")
        typed = dict(zip([c.name for c in numeric], parsed.outer()))
        query = (f"SELECT {code['geography_level']} AS geography_level, {code['area_code']} AS "
                 f"area_code, area_name, {kind} AS area_kind, category, mort_code, "
                 f"{typed.pop('year')}, sex, {', '.join(typed.values())}, $sha AS {SOURCE_SHA}, "
                 f"{parsed.errors()} FROM (SELECT *, {', '.join(parsed.inner())} FROM ({src}))")
        params = {**params, "sha": manifest["sha256"]}
        if "$suppressed" in query:   # not when every numeric column came as numbers
            params["suppressed"] = self.suppressed
        return context.sql(query, params=params)


class MortalityValidator:
    """SQL checks the validation rules cannot express.

    * no cell that is present but not a (whole) number (``_parse_errors``);
    * one row per (geography_level, area_code, year, sex) — a composite key;
    * the level read from the code agrees with the file's ``category`` column.
    """

    def validate(self, context: Any) -> list[str]:
        table = context.output_table(context.input_stage())
        con = context.duckdb
        problems = parse_error_problems(con, table, ["mort_code", "year", "sex"])
        problems += duplicate_key_problems(con, table, KEY)
        n, example, level, category = con.execute(
            f"SELECT count(*), min(mort_code), arg_min(geography_level, mort_code), "
            f"arg_min(category, mort_code) FROM {table} WHERE "
            f"{category_level_sql('category')} IS DISTINCT FROM geography_level "
            f"AND {category_level_sql('category')} IS NOT NULL").fetchone()
        if n:
            problems.append(f"{n} row(s) have an area code whose level disagrees with their "
                            f"category, e.g. {example!r} reads as {level} but is in {category!r}")
        nulls = con.execute("SELECT " + ", ".join(
            f"count(*) - count({quote(c.name)})" for c in INDICATORS) + f" FROM {table}").fetchone()
        context.log.info("mortality_suppressed",
                         **{c.name: n for c, n in zip(INDICATORS, nulls) if n})
        return problems


class MortalityLoader(WarehouseLoader):
    """Upsert into warehouse table ``mortality_region`` by (level, area, year, sex)."""

    table = "mortality_region"
    key = KEY


__all__ = ["LAYOUT", "LEVELS", "KEY", "check_input", "area_code_sql", "MortalityExtractor",
           "MortalityTransformer", "MortalityValidator", "MortalityLoader"]
