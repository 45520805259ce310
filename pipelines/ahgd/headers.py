"""Matching a CSV header to the columns a pipeline needs.

A :class:`Layout` lists the :class:`Column` s of one kind of file, each with
the spellings publishers use; :meth:`Layout.match` reads a header's words after
:func:`normalise` and says which position gives which column, or what is
missing or given twice.  Only the header is read (:func:`read_header`: at most
the first MiB, never through a symbolic link).  Messages show a header's
column names (each cut short), and only from a regular file that was read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipelines import ConfigError, InputError, read_csv_header

DOCS = "docs/bundled-pipelines.md"
_SHOWN_HEADER = 8
_SHOWN_NAME = 40
_ENCODINGS = {"utf-8": "utf-8-sig", "utf8": "utf-8-sig", "latin-1": "latin-1",
              "latin1": "latin-1"}


def normalise(name: str) -> str:
    """Lower case, every run of other characters than letters and digits -> ``_``.

    ``"Index of Relative Socio-economic Disadvantage - Score"`` becomes
    ``index_of_relative_socio_economic_disadvantage_score``.
    """
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


@dataclass(frozen=True)
class Column:
    """A column a pipeline reads: its name in the output and the header spellings it accepts."""

    name: str
    aliases: tuple[str, ...] = ()
    required: bool = False
    kind: str = "text"          # text | number (DOUBLE) | integer (BIGINT)

    @property
    def spellings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalise(a) for a in (self.name, *self.aliases)))


@dataclass(frozen=True)
class Layout:
    """The columns of one kind of file, e.g. "an ABS SEIFA by SA2 CSV"."""

    what: str
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def match(self, header: Sequence[str], file_name: str) -> "HeaderMatch":
        wanted = {s: c.name for c in self.columns for s in c.spellings}
        found: dict[str, list[int]] = {}
        for i, raw in enumerate(header):
            name = wanted.get(normalise(raw))
            if name is not None:
                found.setdefault(name, []).append(i)
        missing = [c.name for c in self.columns if c.required and c.name not in found]
        clashes = {n: [header[i] for i in ix] for n, ix in found.items() if len(ix) > 1}
        problem = None
        if missing:
            problem = (f"{file_name} is not {self.what}: missing column(s) {', '.join(missing)} "
                       f"(its columns: {_show_header(header)}); see {DOCS} for the accepted "
                       "column names")
        elif clashes:
            name, raws = next(iter(clashes.items()))
            problem = (f"{file_name} has {len(raws)} columns that all give {name} "
                       f"({', '.join(_name(r) for r in raws)}); keep one of them")
        return HeaderMatch(header=list(header), positions={n: ix[0] for n, ix in found.items()},
                           problem=problem)


@dataclass
class HeaderMatch:
    header: list[str]
    positions: dict[str, int]            # output column -> position in the file
    problem: str | None = None

    def names(self) -> list[str]:
        """Every position of the file, in the file's order, named for what it gives."""
        names = {i: n for n, i in self.positions.items()}
        return [names.get(i, f"_unused_{i}") for i in range(len(self.header))]


def _show_header(header: Sequence[str]) -> str:
    shown = ", ".join(_name(h) for h in header[:_SHOWN_HEADER])
    more = len(header) - _SHOWN_HEADER
    return shown + (f", ... and {more} more" if more > 0 else "") if header else "none"


def read_header(path: Path, *, encoding: str = "utf-8", delimiter: str = ",") -> list[str]:
    """The first row of a CSV file, from its first MiB at most (never through a link);
    raises InputError for an empty, undecodable or header-less file."""
    return read_csv_header(path, encoding=python_codec(encoding), delimiter=delimiter)


def header_problem(path: str | Path, layout: Layout, *, encoding: str = "utf-8",
                   delimiter: str = ",") -> str | None:
    """Why ``path`` cannot be read as ``layout`` (from its header alone), or None."""
    path = Path(path)
    try:
        return layout.match(read_header(path, encoding=encoding, delimiter=delimiter),
                            path.name).problem
    except InputError as exc:
        return str(exc)
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror or exc})"


def _name(raw: str) -> str:
    """A column name for a message: quoted when empty, cut short when long."""
    if not raw:
        return "''"
    return raw if len(raw) <= _SHOWN_NAME else raw[:_SHOWN_NAME - 3] + "..."


def python_codec(encoding: str) -> str:
    codec = _ENCODINGS.get(encoding.lower())
    if codec is None:
        raise ConfigError(f"encoding {encoding!r} is not supported; use utf-8 or latin-1")
    return codec
