"""The columns a bundled pipeline reads, and matching a table's header to them.

A :class:`Layout` lists the :class:`Column` s of one kind of file, each with
the phrases publishers use for it (its synonyms).  :meth:`Layout.bind` gives
the object :func:`pipelines.tables.source.identify` asks which cell of a
header gives which column: it matches by the header's words
(:mod:`pipelines.tables.headers`: ``IRSD_Decile_Australia``, ``Index of
Relative Socio-economic Disadvantage - Decile`` and ``irsd decile`` are one
column), takes a stage's ``columns:`` mapping first, and names what a header
lacks together with the ``columns:`` lines that would map it.
Messages show a header's column names (each cut short), and only from a
regular file that was read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import ConfigError, read_csv_header
from pipelines.tables.headers import Wanted, mapping_lines, match_header, show_header
from pipelines.tables.source import HeaderFit

DOCS = "docs/bundled-pipelines.md"
_ENCODINGS = {"utf-8": "utf-8-sig", "utf8": "utf-8-sig", "latin-1": "latin-1",
              "latin1": "latin-1", "windows-1252": "cp1252", "cp1252": "cp1252",
              "utf-16": "utf-16", "utf16": "utf-16"}


@dataclass(frozen=True)
class Column:
    """A column a pipeline reads: its name in the output and the phrases (synonyms) a header
    may use for it, compared by their words."""

    name: str
    aliases: tuple[str, ...] = ()
    required: bool = False
    kind: str = "text"          # text | number (DOUBLE) | integer (BIGINT)

    @property
    def wanted(self) -> Wanted:
        return Wanted(self.name, self.aliases)


@dataclass(frozen=True)
class Layout:
    """The columns of one kind of file, e.g. "an ABS SEIFA by SA2 CSV"."""

    what: str
    columns: tuple[Column, ...]
    #: the columns that identify a row (sheets giving different columns are joined on them)
    key: tuple[str, ...] = ()
    #: groups of which the file must give at least one column each (a SEIFA file: a score)
    one_of: tuple[tuple[str, ...], ...] = ()
    #: (a, b): a file that gives ``a`` must give ``b`` too (a SEIFA index's score: its decile)
    together: tuple[tuple[str, str], ...] = ()

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def bind(self, mapping: dict[str, Any] | None = None) -> "LayoutColumns":
        """What :func:`pipelines.tables.source.identify` matches a header with, the stage's
        ``columns:`` mapping (checked here: ConfigError for a name the layout lacks) first."""
        names = [c.name for c in self.columns]
        unknown = [n for n in (mapping or {}) if n not in names]
        if unknown:
            raise ConfigError(f"columns: {', '.join(unknown)} is not a column this pipeline "
                              f"reads; its columns are {', '.join(names)} (see {DOCS})")
        return LayoutColumns(self, dict(mapping or {}))


class LayoutColumns:
    """A :class:`Layout` with a stage's ``columns:`` mapping: ``match(header, title)``."""

    rates = True

    def __init__(self, layout: Layout, mapping: dict[str, Any]):
        self.layout, self.mapping = layout, mapping
        self.what, self.key = layout.what, layout.key
        self.wanted = [c.wanted for c in layout.columns]

    def rate(self, header: list[str], title: list[str]) -> tuple:
        """How well ``header`` fits (higher is better), without the words of a problem."""
        return self.match(header, title, explain=False).score

    def match(self, header: list[str], title: list[str], explain: bool = True) -> HeaderFit:
        layout = self.layout
        found = match_header(header, self.wanted, mapping=self.mapping, context=title)
        names: list[str | None] = [None] * len(header)
        for name, i in found.positions.items():
            names[i] = name
        have = set(found.positions)
        missing = [c.name for c in layout.columns if c.required and c.name not in have]
        groups = [g for g in layout.one_of if not have.intersection(g)]
        missing += [b for a, b in layout.together if a in have and b not in have]
        required = sum(1 for c in layout.columns if c.required and c.name in have)
        score = (not (missing or groups or found.problems or found.ambiguous), required,
                 len(have))
        problem = None
        if explain and found.problems:
            problem = ("does not have the columns the extract stage's columns option names: "
                       + "; ".join(found.problems))
        elif explain and found.ambiguous:
            problem = "has a header that can be read more than one way: " + "; ".join(
                found.ambiguous)
        elif explain and (missing or groups):
            lacks = [", ".join(missing)] if missing else []
            lacks += [f"one of {', '.join(g)}" for g in groups]
            problem = (f"is not {layout.what}: missing column(s) {', and '.join(lacks)} (its "
                       f"columns: {show_header(header)}); see {DOCS} for the accepted column "
                       "names, or map them in the extract stage's config:\n"
                       + mapping_lines(missing + [g[0] for g in groups], found, self.wanted))
        return HeaderFit(names, problem, score)


def read_header(path: Path, *, encoding: str = "utf-8", delimiter: str = ",") -> list[str]:
    """The first row of a CSV file, from its first MiB at most (never through a link);
    raises InputError for an empty, undecodable or header-less file."""
    return read_csv_header(path, encoding=python_codec(encoding), delimiter=delimiter)


def python_codec(encoding: str) -> str:
    codec = _ENCODINGS.get(encoding.lower())
    if codec is None:
        raise ConfigError(f"encoding {encoding!r} is not supported; use utf-8, latin-1, "
                          "windows-1252 or utf-16")
    return codec
