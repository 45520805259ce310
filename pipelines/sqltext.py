"""Names and strings written into DuckDB SQL: the one place they are quoted."""

from __future__ import annotations


def quote(identifier: str) -> str:
    """``identifier`` as a double-quoted SQL name (``a"b`` -> ``"a""b"``)."""
    return '"' + identifier.replace('"', '""') + '"'


def sql_literal(text: str) -> str:
    """``text`` as an SQL string literal (``it's`` -> ``'it''s'``)."""
    return "'" + str(text).replace("'", "''") + "'"


__all__ = ["quote", "sql_literal"]
