"""Validation rules for a stage's output table, run as SQL inside DuckDB.

    check_rules(rules, stage="extract", base_dir=yaml_dir)      # before anything runs
    report = validate_table(con, "irsd", rules, stage="extract")
    enforce(report)                                            # ValidationFailed if bad

Every check is a ``COUNT`` plus a ``LIMIT`` for example rows; the table never
travels into Python.  Identifiers are quoted and values bound as parameters.
Table-level rules (``required_columns``, ``min_records``, ``max_records`` and a
schema's missing columns or column types) always fail the stage.  Row-level
rules fail it too, unless ``quarantine: true`` moves the offending rows into
``<stage>_rejected`` next to the checked table.  See ``docs/validation.md``.

The rules are parsed in :mod:`pipelines.validation.rules` and turned into SQL
checks in :mod:`pipelines.validation.checks`; this module runs them and reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StageOutputError, ValidationFailed
from .checks import Builder, Check, Target, quote, resolve, show
from .rules import RULES, SCHEMA_KEYWORDS, parse_rules

__all__ = ["RULES", "SCHEMA_KEYWORDS", "RuleFailure", "ValidationReport", "check_rules", "enforce",
           "validate_table"]

_ROWID = "_ahgd_rowid"
_REASON = "_rejected_reason"
_SHOWN_FIELDS = 8


@dataclass(frozen=True)
class RuleFailure:
    """One broken rule: which rule, on which column(s), how many rows, a few examples."""

    rule: str
    column: str | None
    count: int
    examples: list[dict]
    message: str


@dataclass(frozen=True)
class ValidationReport:
    """What ``validate_table`` found.

    ``rows`` is the row count before quarantine; ``failures`` are the problems that
    fail the stage; ``quarantined`` the row-level problems whose ``rejected`` rows
    were moved to ``rejected_table``.
    """

    stage: str
    table: str
    rows: int
    passed: bool
    failures: list[RuleFailure]
    rejected: int = 0
    rejected_table: str | None = None
    quarantined: list[RuleFailure] = field(default_factory=list)


def enforce(report: ValidationReport) -> None:
    """Raise ValidationFailed listing every failure, one per line, unless the report passed."""
    if not report.passed:
        raise ValidationFailed("\n".join(f.message for f in report.failures),
                               failures=list(report.failures))


# ---------------------------------------------------------------- static check

def check_rules(rules: Mapping, *, stage: str, base_dir: Path | None = None) -> None:
    """Check the shape of ``rules`` (and read any schema file) without touching data."""
    parse_rules(rules, stage, base_dir)


# ---------------------------------------------------------------- running

def validate_table(con: Any, table: str | Sequence[str], rules: Mapping, *, stage: str,
                   base_dir: Path | None = None, max_examples: int = 5) -> ValidationReport:
    """Check ``rules`` against ``table`` with SQL in DuckDB; quarantine rows if asked.

    ``table`` is a list of name parts (``["db", "main", "irsd"]``, used as given) or
    SQL text (``irsd``, ``main.irsd``, ``db.main."my table"``).  Raises ConfigError
    for rules that do not fit the table; returns a report for rules the data breaks.
    """
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
        raise ValueError(f"max_examples must be a whole number, 0 or more, not {max_examples!r}")
    p = f"stage {stage!r}: "
    spec = parse_rules(rules, stage, base_dir)
    t = resolve(con, table, p)
    quarantine = spec.get("quarantine", False)
    if quarantine:
        _check_quarantinable(t, p)
    b = Builder(spec, t, p).build()
    rows, counts = _count_breaks(con, t, b.checks, p)
    broken = [(c, n) for c, n in zip(b.checks, counts) if n]
    row_failures = [_failure(con, t, c, n, p, max_examples) for c, n in broken]
    rejected = _count_rejected(con, t, [c for c, _ in broken]) if quarantine and broken else 0
    failures = [RuleFailure(rule, col, rows, [], msg) for rule, col, msg in b.problems]
    failures += _record_counts(spec, rows, rejected, p)
    if rejected and not failures:
        moved_to = _move_rejected(con, t, [c for c, _ in broken], stage, p)
        return ValidationReport(stage, t.display, rows, True, [], rejected, moved_to, row_failures)
    failures += row_failures
    return ValidationReport(stage, t.display, rows, not failures, failures)


def _check_quarantinable(t: Target, p: str) -> None:
    names = {n.lower() for n, _ in t.columns}
    if not t.is_table:
        raise ConfigError(p + f"quarantine needs a table, but {t.display} is a view; have the "
                          "stage create a table, or drop quarantine")
    if "rowid" in names:
        raise ConfigError(p + f"quarantine cannot move rows of {t.display}: its column rowid hides "
                          "DuckDB's row ids; rename that column in the stage")
    if _REASON in names:
        raise ConfigError(p + f"quarantine cannot add {_REASON} to the rows of {t.display}, which "
                          "already has a column of that name; rename it in the stage")


def _record_counts(spec: dict, rows: int, rejected: int, p: str) -> list[RuleFailure]:
    kept = rows - rejected
    after = f" after quarantining {rejected}" if rejected else ""
    out = []
    if (lo := spec.get("min_records")) is not None and kept < lo:
        out.append(RuleFailure("min_records", None, kept, [], p + f"min_records: {_rows(kept)}"
                               f"{after}, at least {lo} required"))
    if (hi := spec.get("max_records")) is not None and kept > hi:
        out.append(RuleFailure("max_records", None, kept, [], p + f"max_records: {_rows(kept)}"
                               f"{after}, at most {hi} allowed"))
    return out


def _bad_rows(t: Target, c: Check) -> tuple[str, list]:
    """SELECT of the rows that break ``c`` (with ``_ahgd_rowid`` where the table has row ids)."""
    star = f"rowid AS {_ROWID}, *" if t.has_rowid else "*"
    if not c.key:
        return f"SELECT {star} FROM {t.sql} WHERE {c.pred}", list(c.params)
    keys = ", ".join(quote(k) for k in c.columns)
    present = " AND ".join(f"{quote(k)} IS NOT NULL" for k in c.columns)
    order = " ORDER BY rowid" if t.has_rowid else ""
    return (f"SELECT * EXCLUDE (_ahgd_n) FROM (SELECT {star}, row_number() OVER (PARTITION BY "
            f"{keys}{order}) AS _ahgd_n FROM {t.sql} WHERE {present}) WHERE _ahgd_n > 1", [])


def _count_breaks(con: Any, t: Target, checks: list[Check], p: str) -> tuple[int, list[int]]:
    """Row count and, per check, how many rows break it: one scan for all but ``unique``."""
    import duckdb

    simple = [c for c in checks if not c.key]
    sql = "SELECT count(*)" + "".join(f", count(*) FILTER (WHERE {c.pred})" for c in simple)
    try:
        found = iter(con.execute(f"{sql} FROM {t.sql}",
                                 [x for c in simple for x in c.params]).fetchone())
    except duckdb.Error as exc:
        for c in simple:      # name the rule whose values DuckDB could not use
            try:
                con.execute(f"SELECT count(*) FROM {t.sql} WHERE {c.pred}", list(c.params))
            except duckdb.Error as one:
                raise ConfigError(p + f"{c.where} cannot be checked: {_first_line(one)}; give "
                                  "values of the column's type") from None
        raise StageOutputError(p + f"could not validate {t.display}: {_first_line(exc)}") from exc
    rows = next(found)
    counts = []
    for c in checks:
        if c.key:
            sql, params = _bad_rows(t, c)
            counts.append(con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0])
        else:
            counts.append(next(found))
    return rows, counts


def _failure(con: Any, t: Target, c: Check, n: int, p: str, limit: int) -> RuleFailure:
    examples: list[dict] = []
    if limit:
        sql, params = _bad_rows(t, c)
        order = f" ORDER BY {_ROWID}" if t.has_rowid else ""
        cur = con.execute(f"SELECT * FROM ({sql}){order} LIMIT ?", [*params, limit])
        names = [d[0] for d in cur.description]
        examples = [{k: v for k, v in zip(names, row) if k != _ROWID} for row in cur.fetchall()]
    verb = ("duplicates", "duplicate") if c.key else ("has", "have")
    shown = ", ".join(_show_row(e, c.columns) for e in examples)
    message = p + f"{c.rule}: {_rows(n)} {verb[n != 1]} {c.phrase}"
    message += f"; e.g. {shown}" if shown else ""
    return RuleFailure(c.rule, ", ".join(c.columns), n, examples, message)


def _reasons(t: Target, checks: list[Check]) -> tuple[str, list]:
    """SELECT rid, reason: each bad row once, with every rule it breaks."""
    parts, params = [], []
    for i, c in enumerate(checks):
        sql, ps = _bad_rows(t, c)
        parts.append(f"SELECT {_ROWID} AS rid, ? AS reason, {i} AS ord FROM ({sql})")
        params += [c.reason, *ps]
    return (f"SELECT rid, string_agg(reason, '; ' ORDER BY ord) AS reason FROM "
            f"({' UNION ALL '.join(parts)}) GROUP BY rid", params)


def _count_rejected(con: Any, t: Target, checks: list[Check]) -> int:
    sql, params = _reasons(t, checks)
    return con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]


def _move_rejected(con: Any, t: Target, checks: list[Check], stage: str, p: str) -> str:
    """Copy the bad rows to ``<stage>_rejected`` and delete them, in one transaction."""
    import duckdb

    target = Target((*t.parts[:2], f"{stage}_rejected"), True, ())
    sql, params = _reasons(t, checks)
    own = not _in_transaction(con)    # else the caller's: it commits or rolls back both
    try:
        if own:
            con.begin()
        con.execute(f"CREATE OR REPLACE TABLE {target.sql} AS SELECT t.*, r.reason AS {_REASON} "
                    f"FROM {t.sql} AS t JOIN ({sql}) AS r ON t.rowid = r.rid ORDER BY t.rowid",
                    params)
        con.execute(f"DELETE FROM {t.sql} WHERE rowid IN (SELECT rid FROM ({sql}))", params)
        if own:
            con.commit()
    except duckdb.Error as exc:
        if own:
            con.rollback()
        raise StageOutputError(p + f"could not move rejected rows of {t.display} to "
                               f"{target.display}: {_first_line(exc)}") from exc
    return target.display


def _in_transaction(con: Any) -> bool:
    """True inside BEGIN ... COMMIT: autocommit gives every statement a new transaction id."""
    first = con.execute("SELECT txid_current()").fetchone()[0]
    return con.execute("SELECT txid_current()").fetchone()[0] == first


# ---------------------------------------------------------------- messages

def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def _show_row(row: dict, first: Sequence[str]) -> str:
    keys = list(dict.fromkeys([*first, *row]))
    fields = [f"{k!r}: {show(row[k])}" for k in keys[:_SHOWN_FIELDS]]
    return "{" + ", ".join(fields) + (", ..." if len(keys) > _SHOWN_FIELDS else "") + "}"
