"""Plain-text tables for the terminal: ``ahgd history`` and ``ahgd demo`` print with it."""

from __future__ import annotations

from typing import Any


def render_table(records: list[dict], columns: list[str], max_width: int = 60) -> str:
    """``records`` under a header of ``columns`` and a rule, each column as wide as its widest
    cell; a cell longer than ``max_width`` is cut with an ellipsis, newlines become spaces."""

    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        text = text.replace("\n", " ")
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r.get(c)) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
