"""Validation rules against one table: the table as DuckDB has it, and each rule as SQL.

    t = resolve(con, "irsd", prefix)                 # Target: quoted name, columns, row ids
    b = Builder(spec, t, prefix).build()             # b.problems (table-level), b.checks (SQL)

A :class:`Check` is a row-level rule: a predicate that is true for the rows
breaking it (or a key whose repeats break it).  Identifiers are quoted, values
are bound as parameters.  The rules come parsed from :mod:`pipelines.validation.rules`;
:mod:`pipelines.validation` runs the checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from state.errors import did_you_mean

from ..errors import ConfigError, StageOutputError
from ..sqltext import quote
from .rules import Schema, is_list, is_name

_SHOWN_COLUMNS = 20


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Target:
    parts: tuple[str, str, str]                 # database, schema, table as DuckDB has them
    is_table: bool
    columns: tuple[tuple[str, str], ...]        # (name, DuckDB type)

    @property
    def sql(self) -> str:
        return ".".join(quote(x) for x in self.parts)

    @property
    def display(self) -> str:
        return ".".join(_ident_text(x) for x in self.parts)

    @property
    def has_rowid(self) -> bool:
        return self.is_table and "rowid" not in {n.lower() for n, _ in self.columns}

    def column_list(self) -> str:
        names = [_ident_text(n) for n, _ in self.columns]
        more = len(names) - _SHOWN_COLUMNS
        return ", ".join(names[:_SHOWN_COLUMNS]) + (f", ... and {more} more" if more > 0 else "")


_TABLE_PART = re.compile(r'\s*(?:"((?:[^"]|"")+)"|([^."\s]+))\s*(\.|$)')


def _table_parts(table: str | Sequence[str], p: str) -> tuple[str, ...]:
    """``["db", "main", "t"]`` as given; a string is SQL text: ``db.main."my table"``."""
    parts: list[str] = []
    if isinstance(table, str):
        pos = 0
        while pos < len(table):
            m = _TABLE_PART.match(table, pos)
            if not m or m.end() == pos:
                parts = []
                break
            parts.append(m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2))
            pos = m.end()
            if m.group(3) == "." and pos == len(table):
                parts = []
    elif is_list(table) and all(is_name(x) for x in table):
        parts = list(table)
    if not 1 <= len(parts) <= 3:
        raise ConfigError(p + f"{table!r} is not a table name; write table, schema.table or "
                          'database.schema.table (double-quote parts with spaces or dots, such '
                          'as db.main."my table"), or pass the parts as a list')
    return tuple(parts)


def resolve(con: Any, table: str | Sequence[str], p: str) -> Target:
    """Find the table as DuckDB would (temp first, then the current schema) and its columns."""
    parts = _table_parts(table, p)
    low = [x.lower() for x in parts]
    cur_db, cur_schema = (x.lower() for x in con.execute(
        "SELECT current_database(), current_schema()").fetchone())
    if len(parts) == 3:
        wanted = [(low[0], low[1])]
    elif len(parts) == 2:
        wanted = [(cur_db, low[0]), ("temp", low[0]), (low[0], "main")]
    else:
        wanted = [("temp", "main"), (cur_db, cur_schema), (cur_db, "main")]
    found = con.execute(
        "SELECT database_name, schema_name, table_name, true FROM duckdb_tables() "
        "WHERE lower(table_name) = lower(?) UNION ALL "
        "SELECT database_name, schema_name, view_name, false FROM duckdb_views() "
        "WHERE NOT internal AND lower(view_name) = lower(?)", [parts[-1], parts[-1]]).fetchall()
    ranked = sorted((wanted.index((db.lower(), sch.lower())), db, sch, name, is_table)
                    for db, sch, name, is_table in found if (db.lower(), sch.lower()) in wanted)
    if not ranked:
        raise StageOutputError(p + f"output table {'.'.join(_ident_text(x) for x in parts)} "
                               "does not exist; the stage must create it before its rules "
                               "can be checked")
    _, db, sch, name, is_table = ranked[0]
    cols = con.execute(f"DESCRIBE {'.'.join(quote(x) for x in (db, sch, name))}").fetchall()
    return Target((db, sch, name), bool(is_table), tuple((c[0], c[1]) for c in cols))


def _ident_text(name: str) -> str:
    """A name as messages show it: bare when simple, double-quoted otherwise."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else quote(name)


def _category(sql_type: str) -> str:
    t = sql_type.upper()
    if t in {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
             "UINTEGER", "UBIGINT", "UHUGEINT", "VARINT", "BIGNUM"}:
        return "integer"
    if t in {"FLOAT", "DOUBLE", "REAL"}:
        return "float"
    if t.startswith("DECIMAL"):
        return "decimal"
    if t.startswith(("VARCHAR", "ENUM")):
        return "string"
    if t.startswith(("DATE", "TIME", "UUID", "INTERVAL")):
        return "temporal"   # compared with text such as '2021-06-30'; JSON carries it as a string
    return "boolean" if t == "BOOLEAN" else "other"


def _fits(value: Any, category: str) -> bool:
    if isinstance(value, bool):
        return category == "boolean"
    if isinstance(value, (int, float)):
        return category in ("integer", "float", "decimal")
    return category in ("string", "temporal")


# ---------------------------------------------------------------- checks

@dataclass(frozen=True)
class Check:
    """A row-level rule: rows where ``pred`` is true (or repeats of a ``key``) break it."""

    rule: str                   # RuleFailure.rule: "ranges", "schema"
    label: str                  # in _rejected_reason: "ranges", "schema.minimum"
    columns: tuple[str, ...]
    phrase: str                 # "irsd_decile outside [1, 10]"
    where: str                  # "ranges for irsd_decile", for errors in the rule itself
    pred: str = ""
    params: tuple = ()
    key: bool = False           # unique: every row after the first with the same columns

    @property
    def reason(self) -> str:
        return f"{self.label}:{','.join(self.columns)}"


class Builder:
    """Turns parsed rules into table-level problems and row-level checks for one table."""

    def __init__(self, spec: dict[str, Any], target: Target, prefix: str):
        self.spec, self.target, self.prefix = spec, target, prefix
        self.by_lower = {n.lower(): (n, ty) for n, ty in target.columns}
        self.problems: list[tuple[str, str, str]] = []     # rule, column(s), message
        self.checks: list[Check] = []
        self.missing: set[str] = set()

    def build(self) -> Builder:
        self.require("required_columns", self.spec.get("required_columns", ()), "")
        if "schema" in self.spec:
            s = self.spec["schema"]
            self.require("schema", s.required, f" required by {s.name}")
        for rule, value in self.spec.items():
            if rule in ("not_null", "unique", "ranges", "allowed_values", "pattern", "schema"):
                getattr(self, "_" + rule)(value)
        return self

    def require(self, rule: str, names: Sequence[str], by: str) -> None:
        gone = [n for n in names if n.lower() not in self.by_lower]
        if gone:
            self.missing |= {n.lower() for n in gone}
            shown = ", ".join(_ident_text(n) for n in gone)
            self.problems.append((rule, ", ".join(gone), self.prefix + f"{rule}: missing column(s) "
                                  f"{shown}{by} (the output has: {self.target.column_list()})"))

    def column(self, rule: str, name: str) -> str | None:
        """The table's spelling of ``name``; None if a required-columns failure covers it."""
        hit = self.by_lower.get(name.lower())
        if hit:
            return hit[0]
        if name.lower() in self.missing:
            return None
        names = [n for n, _ in self.target.columns]
        hint = "; " + (did_you_mean(name, names) or "name one of its columns")
        raise ConfigError(self.prefix + f"validation rule {rule} names column {name!r}, which the "
                          f"output does not have (its columns: {self.target.column_list()}){hint}; "
                          "if it is the data that may lack it (a file without the column), list "
                          "it under required_columns too: such data then fails validation as "
                          "bad input, not as a configuration error")

    def guard(self, where: str, col: str, values: Sequence[Any]) -> None:
        sql_type = self.by_lower[col.lower()][1]
        for v in values:
            if not _fits(v, _category(sql_type)):
                raise ConfigError(self.prefix + f"{where} compares the {sql_type} column "
                                  f"{_ident_text(col)} with {v!r}; give values of the column's "
                                  "type, or cast the column in the stage")

    def add(self, rule: str, col: str, phrase: str, pred: str, params: Sequence = (), *,
            label: str | None = None, where: str | None = None) -> None:
        self.checks.append(Check(rule, label or rule, (col,), phrase,
                                  where or f"{rule} for {_ident_text(col)}", pred, tuple(params)))

    def _not_null(self, cols: Sequence[str]) -> None:
        for name in cols:
            if col := self.column("not_null", name):
                self.add("not_null", col, f"NULL in {_ident_text(col)}", f"{quote(col)} IS NULL")

    def _unique(self, keys: Sequence[Sequence[str]]) -> None:
        for key in keys:
            cols = [self.column("unique", name) for name in key]
            if None in cols:
                continue
            shown = ", ".join(_ident_text(c) for c in cols)
            shown = f"({shown})" if len(cols) > 1 else shown
            self.checks.append(Check("unique", "unique", tuple(cols), f"an earlier row's {shown}",
                                      f"unique for {shown}", key=True))

    def _ranges(self, ranges: Sequence[tuple]) -> None:
        for name, lo, hi in ranges:
            if not (col := self.column("ranges", name)):
                continue
            q, c = quote(col), _ident_text(col)
            self.guard(f"ranges for {c}", col, [b for b in (lo, hi) if b is not None])
            if lo is not None and hi is not None:
                self.add("ranges", col, f"{c} outside [{show(lo)}, {show(hi)}]",
                         f"({q} < ? OR {q} > ?)", (lo, hi))
            elif lo is not None:
                self.add("ranges", col, f"{c} below {show(lo)}", f"{q} < ?", (lo,))
            else:
                self.add("ranges", col, f"{c} above {show(hi)}", f"{q} > ?", (hi,))

    def _allowed_values(self, allowed: Sequence[tuple]) -> None:
        for name, values in allowed:
            if col := self.column("allowed_values", name):
                self.guard(f"allowed_values for {_ident_text(col)}", col, values)
                self.add("allowed_values", col, f"{_ident_text(col)} not in {_show_list(values)}",
                         _not_in(col, values), values)

    def _pattern(self, patterns: Sequence[tuple]) -> None:
        for name, regex in patterns:
            if col := self.column("pattern", name):
                self.add("pattern", col, f"{_ident_text(col)} not matching '{regex}'",
                         f"NOT regexp_full_match(CAST({quote(col)} AS VARCHAR), ?)", (regex,))

    def _schema(self, s: Schema) -> None:
        for name in dict.fromkeys([*s.properties, *s.required]):
            hit = self.by_lower.get(name.lower())
            if not hit:
                continue      # required: reported by build(); optional: an absent key is fine
            col, sql_type = hit
            sub = s.properties.get(name, {})
            raw = sub.get("type", [])
            types = list(raw) if is_list(raw) else [raw]
            c, q, w = _ident_text(col), quote(col), f"schema file {s.name}: properties.{name}"

            def add(kw: str, phrase: str, pred: str, params: Sequence = (), note: str = "") -> None:
                self.add("schema", col, f"{phrase} ({s.name} {note or kw})", pred, params,
                         label=f"schema.{kw}", where=f"{w}.{kw}")

            if name in s.required and "null" not in types:
                add("required", f"NULL in {c}", f"{q} IS NULL")
            self._schema_type(s, col, sql_type, types, add)
            if "enum" in sub:
                values = [v for v in sub["enum"] if v is not None]
                self.guard(f"{w}.enum", col, values)
                add("enum", f"{c} not in {_show_list(values)}",
                    _not_in(col, values) if values else f"{q} IS NOT NULL", values)
            for kw, op, word in _BOUNDS:
                if kw in sub:
                    self.guard(f"{w}.{kw}", col, [sub[kw]])
                    add(kw, f"{c} {word} {show(sub[kw])}", f"{q} {op} ?", (sub[kw],))
            text = f"CAST({q} AS VARCHAR)"
            if "pattern" in sub:
                add("pattern", f"{c} not matching '{sub['pattern']}'",
                    f"NOT regexp_matches({text}, ?)", (sub["pattern"],))
            if "minLength" in sub:
                add("minLength", f"{c} shorter than {sub['minLength']} characters",
                    f"length({text}) < ?", (sub["minLength"],))
            if "maxLength" in sub:
                add("maxLength", f"{c} longer than {sub['maxLength']} characters",
                    f"length({text}) > ?", (sub["maxLength"],))

    def _schema_type(self, s: Schema, col: str, sql_type: str, types: list[str], add: Any) -> None:
        wanted = [t for t in types if t != "null"]
        if not types:
            return
        q, cat = quote(col), _category(sql_type)
        if not wanted:
            add("type", f"a value in {_ident_text(col)}", f"{q} IS NOT NULL", note="type null")
            return
        fits = {"integer": {"integer", "number"}, "float": {"number"}, "decimal": {"number"},
                "string": {"string"}, "temporal": {"string"}, "boolean": {"boolean"}}
        if fits.get(cat, set()) & set(wanted):
            return
        if cat in ("float", "decimal") and "integer" in wanted:
            finite = f"NOT isfinite({q}) OR " if cat == "float" else ""
            add("type", f"{_ident_text(col)} not a whole number", f"({finite}{q} <> trunc({q}))",
                note="type integer")
            return
        self.problems.append(("schema", col, self.prefix + f"schema: column {_ident_text(col)} is "
                              f"{sql_type}, but {s.name} gives its type as {' or '.join(wanted)}"))


_BOUNDS = (("minimum", "<", "below"), ("exclusiveMinimum", "<=", "at or below"),
           ("maximum", ">", "above"), ("exclusiveMaximum", ">=", "at or above"))


def _not_in(col: str, values: Sequence[Any]) -> str:
    return f"{quote(col)} NOT IN ({', '.join('?' for _ in values)})"


# ---------------------------------------------------------------- messages

def show(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, Decimal):
        return str(value)
    text = str(value)
    return repr(text if len(text) <= 40 else text[:39] + "…")


def _show_list(values: Sequence[Any]) -> str:
    more = f", ... ({len(values)} values)" if len(values) > 10 else ""
    return "[" + ", ".join(show(v) for v in values[:10]) + more + "]"
