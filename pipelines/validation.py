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
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .errors import ConfigError, StageOutputError, ValidationFailed

RULES = ("required_columns", "min_records", "max_records", "not_null", "unique", "ranges",
         "allowed_values", "pattern", "schema", "quarantine")
SCHEMA_KEYWORDS = ("type", "properties", "required", "enum", "minimum", "maximum",
                   "exclusiveMinimum", "exclusiveMaximum", "pattern", "minLength", "maxLength")
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default",
                          "examples", "deprecated", "readOnly", "writeOnly"})
_JSON_TYPES = ("string", "integer", "number", "boolean", "null")
_ROWID = "_ahgd_rowid"
_REASON = "_rejected_reason"
_SHOWN_COLUMNS = 20
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

@dataclass(frozen=True)
class _Schema:
    name: str                      # as written in the rules, used in messages
    path: Path
    properties: dict[str, dict]
    required: tuple[str, ...]


def check_rules(rules: Mapping, *, stage: str, base_dir: Path | None = None) -> None:
    """Check the shape of ``rules`` (and read any schema file) without touching data."""
    _parse(rules, stage, base_dir)


def _parse(rules: Mapping, stage: str, base_dir: Path | None) -> dict[str, Any]:
    p = f"stage {stage!r}: "
    if not isinstance(rules, Mapping):
        raise ConfigError(p + "validation_rules must be a mapping of rule name to setting, "
                          f"such as {{min_records: 1000}}, not {rules!r}")
    out: dict[str, Any] = {}
    for name, value in rules.items():
        if name not in RULES:
            close = difflib.get_close_matches(str(name), RULES, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "the rules are " + ", ".join(RULES)
            raise ConfigError(p + f"unknown validation rule {name!r}; {hint}")
        out[name] = _RULE_PARSERS[name](p, name, value, base_dir)
    lo, hi = out.get("min_records"), out.get("max_records")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(p + f"min_records {lo} is greater than max_records {hi}; "
                          "lower min_records or raise max_records")
    return out


def _columns(p: str, name: str, value: Any, _base: Any) -> tuple[str, ...]:
    if not _is_list(value) or not all(_is_name(c) for c in value):
        raise ConfigError(p + f"validation rule {name} must be a list of column names such as "
                          f"[sa2_code, sa2_name], not {value!r}")
    return tuple(value)


def _count(p: str, name: str, value: Any, _base: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(p + f"validation rule {name} must be a whole number of rows, "
                          f"0 or more, not {value!r}")
    return value


def _unique(p: str, name: str, value: Any, _base: Any) -> tuple[tuple[str, ...], ...]:
    def key(item: Any) -> tuple[str, ...] | None:
        if _is_name(item):
            return (item,)
        if _is_list(item) and item and all(_is_name(c) for c in item):
            return tuple(item)
        return None

    keys = [key(item) for item in value] if _is_list(value) else [None]
    if None in keys:
        raise ConfigError(p + "validation rule unique must be a list whose items are a column or "
                          "a list of columns (a composite key), such as [sa2_code, [state, year]], "
                          f"not {value!r}")
    return tuple(keys)


def _column_map(p: str, name: str, value: Any, shape: str) -> Mapping:
    if not isinstance(value, Mapping) or not value or not all(_is_name(c) for c in value):
        raise ConfigError(p + f"validation rule {name} must map column names to {shape}, "
                          f"not {value!r}")
    return value


def _ranges(p: str, name: str, value: Any, _base: Any) -> tuple:
    out = []
    for col, bounds in _column_map(p, name, value, "[min, max], such as "
                                   "{irsd_decile: [1, 10]}").items():
        if not _is_list(bounds) or len(bounds) != 2 or not all(
                b is None or _is_scalar(b) and not isinstance(b, bool) for b in bounds):
            raise ConfigError(p + f"ranges for {col} must be [min, max] with numbers, text or "
                              f"null for an open end, not {bounds!r}")
        lo, hi = bounds
        if lo is None and hi is None:
            raise ConfigError(p + f"ranges for {col} is [null, null], which checks nothing; "
                              "give at least one bound")
        if lo is not None and hi is not None and type(lo) is not str and type(hi) is not str \
                and lo > hi:
            raise ConfigError(p + f"ranges for {col} is [{lo}, {hi}], whose minimum is greater "
                              f"than its maximum; write it as [{hi}, {lo}]")
        out.append((col, lo, hi))
    return tuple(out)


def _allowed(p: str, name: str, value: Any, _base: Any) -> tuple:
    out = []
    for col, values in _column_map(p, name, value, "lists of values, such as "
                                   "{state: [NSW, VIC]}").items():
        if not _is_list(values) or not all(v is None or _is_scalar(v) for v in values):
            raise ConfigError(p + f"allowed_values for {col} must be a list of numbers, text or "
                              f"booleans, not {values!r}")
        kept = tuple(v for v in values if v is not None)   # NULL never breaks allowed_values
        if not kept:
            raise ConfigError(p + f"allowed_values for {col} lists no values, so every row with "
                              "a value would fail; list the allowed values")
        out.append((col, kept))
    return tuple(out)


def _pattern(p: str, name: str, value: Any, _base: Any) -> tuple:
    pairs = tuple(_column_map(p, name, value, "regular expressions, such as "
                              "{sa2_code: '[0-9]{9}'}").items())
    for col, regex in pairs:
        if not isinstance(regex, str):
            raise ConfigError(p + f"pattern for {col} must be a regular expression in quotes, "
                              f"not {regex!r}")
        _check_regex(p + f"pattern for {col}", regex)
    return pairs


def _quarantine(p: str, name: str, value: Any, _base: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(p + f"validation rule quarantine must be true or false, not {value!r}")
    return value


def _schema(p: str, name: str, value: Any, base_dir: Path | None) -> _Schema:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(p + "validation rule schema must be the path of a JSON Schema file, "
                          f"such as schemas/irsd.json, not {value!r}")
    path = Path(base_dir or ".") / value
    if not path.is_file():
        where = f"relative to {base_dir}" if base_dir else "relative to the current directory"
        raise ConfigError(p + f"validation rule schema names {value!r}, but {path} does not exist; "
                          f"give the path of a JSON Schema file {where}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(p + f"schema file {path} is not valid JSON: {exc}") from None
    return _SchemaReader(p + f"schema file {path}", value, path).read(doc)


class _SchemaReader:
    """Turns a JSON Schema document into ``_Schema``, naming what it cannot honour."""

    def __init__(self, prefix: str, name: str, path: Path):
        self.prefix, self.name, self.path = prefix, name, path

    def fail(self, where: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.prefix}: {where} must be {what}, not {value!r}")

    def read(self, doc: Any) -> _Schema:
        if not isinstance(doc, dict):
            raise ConfigError(f"{self.prefix} must hold a JSON object with properties, "
                              f"not {doc!r}")
        unsupported = self.unsupported(doc, "", top=True)
        if unsupported:
            raise ConfigError(f"{self.prefix} uses JSON Schema keyword(s) not supported here: "
                              f"{', '.join(unsupported)}; supported: {', '.join(SCHEMA_KEYWORDS)}")
        if doc.get("type", "object") != "object":
            raise self.fail("type", "'object' (the schema of one row)", doc["type"])
        props = doc.get("properties", {})
        if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
            raise self.fail("properties", "an object mapping column names to schemas", props)
        required = doc.get("required", [])
        if not _is_list(required) or not all(_is_name(c) for c in required):
            raise self.fail("required", "a list of column names", required)
        for col, sub in props.items():
            self.check_property(f"properties.{col}", sub)
        return _Schema(self.name, self.path, props, tuple(required))

    def unsupported(self, doc: dict, where: str, *, top: bool) -> list[str]:
        allowed = {"type", "properties", "required"} if top else set(SCHEMA_KEYWORDS) - {
            "properties", "required"}
        found = [where + k for k in doc if k not in allowed and k not in _ANNOTATIONS]
        props = doc.get("properties") if top else None
        if isinstance(props, dict):
            for col, sub in props.items():
                if isinstance(sub, dict):
                    found += self.unsupported(sub, f"properties.{col}.", top=False)
                else:
                    found.append(f"properties.{col} (a boolean schema)")
        return found

    def check_property(self, where: str, sub: dict) -> None:
        types = sub.get("type", [])
        if not all(t in _JSON_TYPES for t in (types if _is_list(types) else [types])):
            raise self.fail(f"{where}.type", "one of " + ", ".join(_JSON_TYPES)
                            + " or a list of them", types)
        for kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if kw in sub and (isinstance(sub[kw], bool) or not isinstance(sub[kw], (int, float))):
                raise self.fail(f"{where}.{kw}", "a number", sub[kw])
        for kw in ("minLength", "maxLength"):
            if kw in sub and (isinstance(sub[kw], bool) or not isinstance(sub[kw], int)
                              or sub[kw] < 0):
                raise self.fail(f"{where}.{kw}", "a whole number, 0 or more", sub[kw])
        if "enum" in sub and (not _is_list(sub["enum"]) or not sub["enum"]
                              or not all(v is None or _is_scalar(v) for v in sub["enum"])):
            raise self.fail(f"{where}.enum", "a non-empty list of numbers, text, booleans or null",
                            sub["enum"])
        if "pattern" in sub:
            if not isinstance(sub["pattern"], str):
                raise self.fail(f"{where}.pattern", "a regular expression", sub["pattern"])
            _check_regex(f"{self.prefix}: {where}.pattern", sub["pattern"])


def _check_regex(what: str, regex: str) -> None:
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.execute("SELECT regexp_matches('', ?)", [regex])
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0].removeprefix("Invalid Input Error: ")
        raise ConfigError(f"{what} is not a valid regular expression ({reason}): {regex!r}; "
                          "DuckDB uses RE2 syntax") from None
    finally:
        con.close()


_RULE_PARSERS = {"required_columns": _columns, "min_records": _count, "max_records": _count,
                 "not_null": _columns, "unique": _unique, "ranges": _ranges,
                 "allowed_values": _allowed, "pattern": _pattern, "schema": _schema,
                 "quarantine": _quarantine}


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class _Target:
    parts: tuple[str, str, str]                 # database, schema, table as DuckDB has them
    is_table: bool
    columns: tuple[tuple[str, str], ...]        # (name, DuckDB type)

    @property
    def sql(self) -> str:
        return ".".join(_quote(x) for x in self.parts)

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
    elif _is_list(table) and all(_is_name(x) for x in table):
        parts = list(table)
    if not 1 <= len(parts) <= 3:
        raise ConfigError(p + f"{table!r} is not a table name; write table, schema.table or "
                          'database.schema.table (double-quote parts with spaces or dots, such '
                          'as db.main."my table"), or pass the parts as a list')
    return tuple(parts)


def _resolve(con: Any, table: str | Sequence[str], p: str) -> _Target:
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
    cols = con.execute(f"DESCRIBE {'.'.join(_quote(x) for x in (db, sch, name))}").fetchall()
    return _Target((db, sch, name), bool(is_table), tuple((c[0], c[1]) for c in cols))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ident_text(name: str) -> str:
    """A name as messages show it: bare when simple, double-quoted otherwise."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else _quote(name)


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
class _Check:
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


class _Builder:
    """Turns parsed rules into table-level problems and row-level checks for one table."""

    def __init__(self, spec: dict[str, Any], target: _Target, prefix: str):
        self.spec, self.t, self.p = spec, target, prefix
        self.by_lower = {n.lower(): (n, ty) for n, ty in target.columns}
        self.problems: list[tuple[str, str, str]] = []     # rule, column(s), message
        self.checks: list[_Check] = []
        self.missing: set[str] = set()

    def build(self) -> _Builder:
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
            self.problems.append((rule, ", ".join(gone), self.p + f"{rule}: missing column(s) "
                                  f"{shown}{by} (the output has: {self.t.column_list()})"))

    def column(self, rule: str, name: str) -> str | None:
        """The table's spelling of ``name``; None if a required-columns failure covers it."""
        hit = self.by_lower.get(name.lower())
        if hit:
            return hit[0]
        if name.lower() in self.missing:
            return None
        names = [n for n, _ in self.t.columns]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; name one of its columns"
        raise ConfigError(self.p + f"validation rule {rule} names column {name!r}, which the "
                          f"output does not have (its columns: {self.t.column_list()}){hint}")

    def guard(self, where: str, col: str, values: Sequence[Any]) -> None:
        sql_type = self.by_lower[col.lower()][1]
        for v in values:
            if not _fits(v, _category(sql_type)):
                raise ConfigError(self.p + f"{where} compares the {sql_type} column "
                                  f"{_ident_text(col)} with {v!r}; give values of the column's "
                                  "type, or cast the column in the stage")

    def add(self, rule: str, col: str, phrase: str, pred: str, params: Sequence = (), *,
            label: str | None = None, where: str | None = None) -> None:
        self.checks.append(_Check(rule, label or rule, (col,), phrase,
                                  where or f"{rule} for {_ident_text(col)}", pred, tuple(params)))

    def _not_null(self, cols: Sequence[str]) -> None:
        for name in cols:
            if col := self.column("not_null", name):
                self.add("not_null", col, f"NULL in {_ident_text(col)}", f"{_quote(col)} IS NULL")

    def _unique(self, keys: Sequence[Sequence[str]]) -> None:
        for key in keys:
            cols = [self.column("unique", name) for name in key]
            if None in cols:
                continue
            shown = ", ".join(_ident_text(c) for c in cols)
            shown = f"({shown})" if len(cols) > 1 else shown
            self.checks.append(_Check("unique", "unique", tuple(cols), f"an earlier row's {shown}",
                                      f"unique for {shown}", key=True))

    def _ranges(self, ranges: Sequence[tuple]) -> None:
        for name, lo, hi in ranges:
            if not (col := self.column("ranges", name)):
                continue
            q, c = _quote(col), _ident_text(col)
            self.guard(f"ranges for {c}", col, [b for b in (lo, hi) if b is not None])
            if lo is not None and hi is not None:
                self.add("ranges", col, f"{c} outside [{_show(lo)}, {_show(hi)}]",
                         f"({q} < ? OR {q} > ?)", (lo, hi))
            elif lo is not None:
                self.add("ranges", col, f"{c} below {_show(lo)}", f"{q} < ?", (lo,))
            else:
                self.add("ranges", col, f"{c} above {_show(hi)}", f"{q} > ?", (hi,))

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
                         f"NOT regexp_full_match(CAST({_quote(col)} AS VARCHAR), ?)", (regex,))

    def _schema(self, s: _Schema) -> None:
        for name in dict.fromkeys([*s.properties, *s.required]):
            hit = self.by_lower.get(name.lower())
            if not hit:
                continue      # required: reported by build(); optional: an absent key is fine
            col, sql_type = hit
            sub = s.properties.get(name, {})
            raw = sub.get("type", [])
            types = list(raw) if _is_list(raw) else [raw]
            c, q, w = _ident_text(col), _quote(col), f"schema file {s.name}: properties.{name}"

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
                    add(kw, f"{c} {word} {_show(sub[kw])}", f"{q} {op} ?", (sub[kw],))
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

    def _schema_type(self, s: _Schema, col: str, sql_type: str, types: list[str], add: Any) -> None:
        wanted = [t for t in types if t != "null"]
        if not types:
            return
        q, cat = _quote(col), _category(sql_type)
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
        self.problems.append(("schema", col, self.p + f"schema: column {_ident_text(col)} is "
                              f"{sql_type}, but {s.name} gives its type as {' or '.join(wanted)}"))


_BOUNDS = (("minimum", "<", "below"), ("exclusiveMinimum", "<=", "at or below"),
           ("maximum", ">", "above"), ("exclusiveMaximum", ">=", "at or above"))


def _not_in(col: str, values: Sequence[Any]) -> str:
    return f"{_quote(col)} NOT IN ({', '.join('?' for _ in values)})"


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
    spec = _parse(rules, stage, base_dir)
    t = _resolve(con, table, p)
    quarantine = spec.get("quarantine", False)
    if quarantine:
        _check_quarantinable(t, p)
    b = _Builder(spec, t, p).build()
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


def _check_quarantinable(t: _Target, p: str) -> None:
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


def _bad_rows(t: _Target, c: _Check) -> tuple[str, list]:
    """SELECT of the rows that break ``c`` (with ``_ahgd_rowid`` where the table has row ids)."""
    star = f"rowid AS {_ROWID}, *" if t.has_rowid else "*"
    if not c.key:
        return f"SELECT {star} FROM {t.sql} WHERE {c.pred}", list(c.params)
    keys = ", ".join(_quote(k) for k in c.columns)
    present = " AND ".join(f"{_quote(k)} IS NOT NULL" for k in c.columns)
    order = " ORDER BY rowid" if t.has_rowid else ""
    return (f"SELECT * EXCLUDE (_ahgd_n) FROM (SELECT {star}, row_number() OVER (PARTITION BY "
            f"{keys}{order}) AS _ahgd_n FROM {t.sql} WHERE {present}) WHERE _ahgd_n > 1", [])


def _count_breaks(con: Any, t: _Target, checks: list[_Check], p: str) -> tuple[int, list[int]]:
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


def _failure(con: Any, t: _Target, c: _Check, n: int, p: str, limit: int) -> RuleFailure:
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


def _reasons(t: _Target, checks: list[_Check]) -> tuple[str, list]:
    """SELECT rid, reason: each bad row once, with every rule it breaks."""
    parts, params = [], []
    for i, c in enumerate(checks):
        sql, ps = _bad_rows(t, c)
        parts.append(f"SELECT {_ROWID} AS rid, ? AS reason, {i} AS ord FROM ({sql})")
        params += [c.reason, *ps]
    return (f"SELECT rid, string_agg(reason, '; ' ORDER BY ord) AS reason FROM "
            f"({' UNION ALL '.join(parts)}) GROUP BY rid", params)


def _count_rejected(con: Any, t: _Target, checks: list[_Check]) -> int:
    sql, params = _reasons(t, checks)
    return con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]


def _move_rejected(con: Any, t: _Target, checks: list[_Check], stage: str, p: str) -> str:
    """Copy the bad rows to ``<stage>_rejected`` and delete them, in one transaction."""
    import duckdb

    target = _Target((*t.parts[:2], f"{stage}_rejected"), True, ())
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


def _show(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, Decimal):
        return str(value)
    text = str(value)
    return repr(text if len(text) <= 40 else text[:39] + "…")


def _show_list(values: Sequence[Any]) -> str:
    more = f", ... ({len(values)} values)" if len(values) > 10 else ""
    return "[" + ", ".join(_show(v) for v in values[:10]) + more + "]"


def _show_row(row: dict, first: Sequence[str]) -> str:
    keys = list(dict.fromkeys([*first, *row]))
    fields = [f"{k!r}: {_show(row[k])}" for k in keys[:_SHOWN_FIELDS]]
    return "{" + ", ".join(fields) + (", ..." if len(keys) > _SHOWN_FIELDS else "") + "}"
