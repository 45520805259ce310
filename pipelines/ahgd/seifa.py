"""``seifa_sa2``: ABS Socio-Economic Indexes for Areas (SEIFA) 2021 by SA2.

    extract  -> SeifaExtractor    header matched against the ABS spellings, file hashed
    transform-> SeifaTransformer  codes, state/SA3/SA4, typed indexes; suppressed_counts
    validate -> SeifaValidator    parse errors, suppression and decile/score consistency
    load     -> SeifaLoader       warehouse table seifa_sa2, upsert by sa2_code

Column names are matched by their words (:mod:`pipelines.tables.headers`), so
``SA2_CODE21``, ``SA2_Code_2021`` and "2021 Statistical Area Level 2 (SA2)
9-Digit Code" all give ``sa2_code``, and ``IRSD_Decile_Australia`` and "Index
of Relative Socio-economic Disadvantage - Decile" give ``irsd_decile``; in the
ABS data cube (one index per sheet, ``Score`` and ``Decile`` under a title that
names the index) the title's words name the index.  ``sa2_code`` and the
score of at least one index are required, and each index given needs its
decile; the other indexes are NULL (an IRSD-only file fills IRSD); ranks and
percentiles are kept when the file has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import csv_error, quote
from .common import (PARSE_ERRORS, SOURCE_SHA, ParsedColumns, SourceExtractor, blank_sql,
                     parse_error_problems, read_input, suppressed_param)
from .headers import Column, Layout
from .warehouse import WarehouseLoader

INDEXES = {
    "irsd": "index_of_relative_socio_economic_disadvantage",
    "irsad": "index_of_relative_socio_economic_advantage_and_disadvantage",
    "ier": "index_of_economic_resources",
    "ieo": "index_of_education_and_occupation",
}
#: measure -> (header suffixes ABS uses, type); scores are DOUBLE (LGA files publish 1045.6)
MEASURES = {
    "score": (("score",), "number"),
    "decile": (("decile", "decile australia"), "integer"),
    "rank": (("rank", "rank australia"), "integer"),
    "percentile": (("percentile", "percentile australia"), "integer"),
    "state_rank": (("rank state", "rank state territory"), "integer"),
    "state_decile": (("decile state", "decile state territory"), "integer"),
    "state_percentile": (("percentile state", "percentile state territory"), "integer"),
}
#: ASGS 2021 state and territory codes (the first digit of every SA2 code)
STATES = {
    "1": ("New South Wales", "NSW"), "2": ("Victoria", "Vic."), "3": ("Queensland", "Qld"),
    "4": ("South Australia", "SA"), "5": ("Western Australia", "WA"), "6": ("Tasmania", "Tas."),
    "7": ("Northern Territory", "NT"), "8": ("Australian Capital Territory", "ACT"),
    "9": ("Other Territories", "OT"),
}
SA2_CODE = "[1-9][0-9]{8}"
CORE = ("score", "decile")
#: in every output, NULL when the file lacks them (rules and the profile name them)
ALWAYS = {f"{idx}_{m}" for idx in INDEXES for m in CORE} | {"usual_resident_population"}


def _index_columns() -> list[Column]:
    out = []
    for idx, long in INDEXES.items():
        for measure, (phrases, kind) in MEASURES.items():
            aliases = [f"{p} {s}" for p in (idx, long) for s in phrases]
            out.append(Column(f"{idx}_{measure}", tuple(aliases), kind=kind))
    return out


#: synonyms are phrases matched by their words (case, punctuation, years and "of",
#: "within"... do not matter); docs/bundled-pipelines.md lists them
LAYOUT = Layout("an ABS SEIFA by SA2 table", (
    Column("sa2_code", ("sa2 maincode", "sa2 main code", "sa2 main", "sa2 9 digit code",
                        "statistical area level 2 code"), required=True),
    Column("sa2_name", ("sa2 name", "statistical area level 2 name")),
    *_index_columns(),
    Column("usual_resident_population", ("usual resident population", "urp", "population",
                                         "total population"), kind="integer"),
), key=("sa2_code",), one_of=(tuple(f"{idx}_score" for idx in INDEXES),),
    together=tuple((f"{idx}_score", f"{idx}_decile") for idx in INDEXES))


def check_input(path: Path) -> str | None:
    """For a drop folder's ``input_check``: why ``path`` is not a SEIFA SA2 table (from its
    top alone), or None."""
    return SeifaExtractor().check_input(path)


def sa2_parts_sql(code: str) -> dict[str, str]:
    """SQL deriving state, SA4 and SA3 from a 9-digit SA2 code (NULL for anything else)."""
    valid = f"regexp_full_match({code}, '{SA2_CODE}')"

    def state(i: int) -> str:
        whens = " ".join(f"WHEN '{k}' THEN '{v[i]}'" for k, v in STATES.items())
        return f"CASE WHEN {valid} THEN CASE left({code}, 1) {whens} END END"

    return {"state_code": f"CASE WHEN {valid} THEN left({code}, 1) END",
            "state_name": state(0), "state_abbr": state(1),
            "sa4_code": f"CASE WHEN {valid} THEN left({code}, 3) END",
            "sa3_code": f"CASE WHEN {valid} THEN left({code}, 5) END"}


class SeifaExtractor(SourceExtractor):
    """Identify a SEIFA SA2 table (see :class:`~pipelines.ahgd.common.SourceExtractor`):
    of a workbook, every sheet that is one (the data cube's one index per sheet), joined
    on ``sa2_code``."""

    layout = LAYOUT
    all_sheets = True


class SeifaTransformer:
    """Parse and derive in one SQL statement over the CSV; count suppressed scores.

    Output tables: ``output`` (one row per SA2) and ``suppressed_counts``
    (per index in the file: rows, and rows whose score is blank).
    ``suppressed`` lists the cell values, besides blank, read as "not
    published" (default ``n.p.``, ``np``).
    """

    def __init__(self, suppressed: list[str] | None = None):
        self.suppressed = suppressed_param(suppressed)

    def transform(self, context: Any) -> dict[str, Any]:
        manifest = context.get_output("extract")
        read = read_input(context, LAYOUT)
        source, params = read.sql, read.params
        present = set(read.columns)
        numeric = [c for c in LAYOUT.columns[2:] if c.name in present or c.name in ALWAYS]
        parsed = ParsedColumns(numeric)
        raw = ", ".join(f"{_raw(c.name, present)} AS {quote(c.name)}" for c in numeric)
        name = "trim(sa2_name)" if "sa2_name" in present else "NULL::VARCHAR"
        parts = ", ".join(f"{sql} AS {quote(n)}" for n, sql in sa2_parts_sql("sa2_code").items())
        src = f"SELECT trim(sa2_code) AS sa2_code, {name} AS sa2_name, {raw} FROM {source}"
        query = (f"SELECT sa2_code, sa2_name, {parts}, {', '.join(parsed.outer())}, "
                 f"$sha AS {SOURCE_SHA}, {parsed.errors()} "
                 f"FROM (SELECT *, {', '.join(parsed.inner())} FROM ({src}))")
        output = context.sql(query, params={**params, "sha": manifest["sha256"],
                                            "suppressed": self.suppressed})
        counts = context.sql(self._suppressed_sql(source, present), params={
            **params, "suppressed": self.suppressed})
        try:  # the first read of the file: a ragged row or an open quote is named here
            found = {idx: n for idx, _rows, n in counts.fetchall()}
        except Exception as exc:
            problem = csv_error(exc, input_file=context.input_file)
            if problem is None:
                raise
            raise problem from None
        context.log.info("seifa_suppressed", **{f"{k}_score": v for k, v in found.items()})
        return {"output": output, "suppressed_counts": counts}

    @staticmethod
    def _suppressed_sql(source: str, present: set[str]) -> str:
        parts = [f"SELECT '{idx}' AS \"index\", count(*) AS \"rows\", count(*) FILTER "
                 f"(WHERE {blank_sql(quote(idx + '_score'))}) AS suppressed FROM {source}"
                 for idx in INDEXES if f"{idx}_score" in present]
        return " UNION ALL ".join(parts)


def _raw(name: str, present: set[str]) -> str:
    return quote(name) if name in present else "NULL::VARCHAR"


class SeifaValidator:
    """SQL checks the validation rules cannot express.

    * no cell that is present but not a number (``_parse_errors``);
    * each index has a score exactly where it has a decile (ABS suppresses both);
    * deciles rise with the score: the highest score of decile d is at most the
      lowest of the next decile (a mis-labelled column breaks this);
    * ranks are 1 or more and percentiles 1..100, where the file has them.
    """

    def validate(self, context: Any) -> list[str]:
        table = context.output_table(context.input_stage())
        con = context.duckdb
        columns = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        problems = parse_error_problems(con, table, ["sa2_code"])
        for idx in INDEXES:
            problems += _pairing(con, table, idx)
            problems += _deciles_rise(con, table, idx)
            for measure, (lo, hi) in (("rank", (1, None)), ("percentile", (1, 100)),
                                      ("state_rank", (1, None)), ("state_decile", (1, 10)),
                                      ("state_percentile", (1, 100))):
                if f"{idx}_{measure}" in columns:
                    problems += _outside(con, table, f"{idx}_{measure}", lo, hi)
        context.log.info("seifa_checked", problems=len(problems))
        return problems


def _pairing(con: Any, table: str, idx: str) -> list[str]:
    score, decile = quote(f"{idx}_score"), quote(f"{idx}_decile")
    n, example = con.execute(
        f"SELECT count(*), min(sa2_code) FROM {table} "
        f"WHERE ({score} IS NULL) <> ({decile} IS NULL) AND {PARSE_ERRORS} IS NULL").fetchone()
    if not n:
        return []
    return [f"{idx}: {n} SA2(s) have a score without a decile or a decile without a score, "
            f"e.g. {example}; ABS suppresses both together, so the file is inconsistent"]


def _deciles_rise(con: Any, table: str, idx: str) -> list[str]:
    score, decile = quote(f"{idx}_score"), quote(f"{idx}_decile")
    rows = con.execute(
        f"SELECT d, hi, next_d, next_lo FROM (SELECT d, hi, lead(d) OVER w AS next_d, "
        f"lead(lo) OVER w AS next_lo FROM (SELECT {decile} AS d, min({score}) AS lo, "
        f"max({score}) AS hi FROM {table} WHERE {decile} BETWEEN 1 AND 10 AND {score} IS NOT NULL "
        f"GROUP BY 1) WINDOW w AS (ORDER BY d)) WHERE hi > next_lo ORDER BY d").fetchall()
    return [f"{idx}: decile {d} has scores up to {hi:g} but decile {nd} starts at {lo:g}; deciles "
            "must rise with the score (is a score or decile column mislabelled?)"
            for d, hi, nd, lo in rows]


def _outside(con: Any, table: str, column: str, lo: int, hi: int | None) -> list[str]:
    col = quote(column)
    n, example = con.execute(f"SELECT count(*), min({col}) FROM {table} WHERE {col} < $lo OR "
                             f"{col} > coalesce($hi, {col})", {"lo": lo, "hi": hi}).fetchone()
    if not n:
        return []
    bound = f"[{lo}, {hi}]" if hi is not None else f"{lo} or more"
    return [f"{column}: {n} value(s) outside {bound}, e.g. {example}"]


class SeifaLoader(WarehouseLoader):
    """Upsert into warehouse table ``seifa_sa2`` by ``sa2_code``."""

    table = "seifa_sa2"
    key = ("sa2_code",)


__all__ = ["LAYOUT", "STATES", "check_input", "sa2_parts_sql", "SeifaExtractor",
           "SeifaTransformer", "SeifaValidator", "SeifaLoader"]
