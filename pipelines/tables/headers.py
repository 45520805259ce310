"""Matching a table's header to the columns a pipeline needs, by the header's words.

    wanted = [Wanted("irsd_decile", ("irsd decile", "index of relative socio-economic "
                                     "disadvantage decile"))]
    found = match_header(["SA2_Code_2021", "IRSD_Decile_Australia"], wanted)
    found.positions        # {"irsd_decile": 1}

A header cell and a synonym are compared as sets of :func:`words` (lower case,
split at anything that is not a letter or digit, a year such as ``2021`` or the
``21`` of ``CODE21`` dropped, and ``of``/``the``/``and``/``within``… ignored),
so ``IRSD_Decile_Australia``, ``Index of Relative Socio-economic Disadvantage -
Decile`` and ``irsd decile`` are one column.  A cell gives the column one of
whose synonyms it contains whole; of several, the one with the most words (the
most specific: ``IRSD decile (state)`` is the state decile, not the decile).
A cell that names nothing by itself is read again with the words of the title
rows above the table (``Score`` under a title naming the IRSD), for a phrase
that shares a word with the cell (a column ``k`` is not named by the title).  Two columns
equally likely for one cell, or two cells equally good for one column, are
refused, listing the candidates; so is a column the file lacks, with the
``columns:`` lines that would map it.  ``mapping`` (a stage's ``columns:``
option) names a column's cell outright: by name, or by position counting from 1.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

#: words that carry no meaning in a column name
STOP_WORDS = frozenset({"of", "the", "and", "for", "in", "by", "within", "a", "an", "to",
                        "at", "or", "as"})
SHOWN_NAME = 40
SHOWN_HEADER = 8
_TOKEN = re.compile(r"[^\W_]+")
_YEAR_SUFFIX = re.compile(r"^([^\W\d_]{2,})(\d{2}|(?:19|20)\d{2})$")
_YEAR = re.compile(r"^(?:19|20)\d{2}$")


def words(text: Any) -> frozenset[str]:
    """The meaningful words of a column name (see the module's docstring)."""
    return _words(str(text or ""))


@functools.lru_cache(maxsize=8192)
def _words(text: str) -> frozenset[str]:
    out: set[str] = set()
    for token in _TOKEN.findall(text.lower()):
        split = _YEAR_SUFFIX.match(token)
        if split:
            token = split.group(1)          # CODE21 -> code, SA2_NAME_2021 -> sa2, name
        if _YEAR.match(token) or token in STOP_WORDS:
            continue
        out.add(token)
    return frozenset(out)


def shown(raw: Any) -> str:
    """A column name for a message: quoted when empty, cut short in the middle when long
    (publishers' long names differ at their ends: "... Disadvantage - Score", "- Decile")."""
    text = "" if raw is None else str(raw)
    if not text:
        return "''"
    if len(text) <= SHOWN_NAME:
        return text
    tail = (SHOWN_NAME - 3) // 3
    return text[:SHOWN_NAME - 3 - tail] + "..." + text[-tail:]


def show_header(header: Sequence[Any], limit: int = SHOWN_HEADER) -> str:
    if not header:
        return "none"
    more = len(header) - limit
    return ", ".join(shown(h) for h in header[:limit]) + (f", ... and {more} more"
                                                          if more > 0 else "")


@dataclass(frozen=True)
class Wanted:
    """A column a pipeline reads: its name, and the phrases (synonyms) a header may use."""

    name: str
    synonyms: tuple[str, ...] = ()

    @functools.cached_property
    def phrases(self) -> tuple[frozenset[str], ...]:
        found = [words(s) for s in (self.name.replace("_", " "), *self.synonyms)]
        return tuple(dict.fromkeys(p for p in found if p))


@dataclass
class HeaderMatch:
    """What :func:`match_header` found: the position (0-based) each column comes from,
    and what is wrong (``ambiguous``: a sentence per ambiguity)."""

    header: list[str]
    positions: dict[str, int] = field(default_factory=dict)
    ambiguous: list[str] = field(default_factory=list)
    mapped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)    # a mapping that names nothing

    def names(self) -> list[str]:
        """Every position of the file, in the file's order, named for what it gives."""
        names = {i: n for n, i in self.positions.items()}
        return [names.get(i, f"_unused_{i}") for i in range(len(self.header))]

    def unused(self) -> list[int]:
        taken = set(self.positions.values())
        return [i for i in range(len(self.header)) if i not in taken]


def match_header(header: Sequence[Any], wanted: Iterable[Wanted], *,
                 mapping: Mapping[str, Any] | None = None,
                 context: Iterable[Any] = ()) -> HeaderMatch:
    """Which cell of ``header`` gives each ``wanted`` column (see the module's docstring)."""
    cells = ["" if h is None else str(h) for h in header]
    result = HeaderMatch(header=cells)
    wanted = list(wanted)
    taken: set[int] = set()
    for name, target in (mapping or {}).items():
        index, problem = _mapped_position(cells, name, target)
        if problem:
            result.problems.append(problem)
        else:
            result.positions[name] = result.mapped[name] = index
            taken.add(index)
    todo = [w for w in wanted if w.name not in result.positions]
    title = frozenset().union(*(words(c) for c in context))
    best: dict[int, tuple[int, int, list[str]]] = {}       # cell -> (score, extra, columns)
    for i, cell in enumerate(cells):
        if i in taken or not cell.strip():
            continue
        found = _candidates(words(cell), todo)
        if not found and title:
            found = _candidates(words(cell) | title, todo, penalty=len(title) + 1,
                                own=words(cell))
        if found:
            best[i] = found
    by_column: dict[str, list[tuple[int, int]]] = {}
    for i, (_score, extra, names) in best.items():
        if len(names) > 1:
            result.ambiguous.append(
                f"column {shown(cells[i])!r} (column {i + 1}) could be any of "
                f"{', '.join(names)}; say which with the columns: option, e.g. "
                f"columns: {{{names[0]}: {i + 1}}}")
            continue
        by_column.setdefault(names[0], []).append((extra, i))
    for name, options in by_column.items():
        options.sort()
        tied = [i for extra, i in options if extra == options[0][0]]
        if len(tied) > 1:
            result.ambiguous.append(
                f"{len(tied)} columns all give {name} "
                f"({', '.join(repr(shown(cells[i])) for i in tied)}); keep one of them, or say "
                f"which with the columns: option, e.g. columns: {{{name}: {tied[0] + 1}}}")
            continue
        result.positions[name] = options[0][1]
    return result


def _candidates(cell: frozenset[str], wanted: Sequence[Wanted], penalty: int = 0,
                own: frozenset[str] | None = None) -> tuple[int, int, list[str]] | None:
    """(score, extra words, columns) of the columns ``cell`` gives best, or None.  With the
    title's words added (``own``: the cell's), a phrase must share a word with the cell."""
    scored: dict[str, tuple[int, int]] = {}
    for w in wanted:
        for phrase in w.phrases:
            if phrase <= cell and (own is None or phrase & own):
                score = (len(phrase), -(len(cell - phrase) + penalty))
                scored[w.name] = max(scored.get(w.name, score), score)
    if not scored:
        return None
    top = max(scored.values())
    return top[0], -top[1], [n for n, s in scored.items() if s == top]


def _mapped_position(cells: list[str], name: str, target: Any) -> tuple[int, str | None]:
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        return -1, (f"columns: {name}: {target!r} is neither a column name nor a position "
                    "(a whole number counting from 1)")
    if isinstance(target, int):
        if 1 <= target <= len(cells):
            return target - 1, None
        return -1, (f"columns: {name}: {target} is not a column of the file, which has "
                    f"{len(cells)} column(s) (positions count from 1)")
    exact = [i for i, c in enumerate(cells) if c.strip().lower() == target.strip().lower()]
    if len(exact) == 1:
        return exact[0], None
    same = [i for i, c in enumerate(cells) if words(c) and words(c) == words(target)]
    if len(exact) > 1 or len(same) > 1:
        both = exact if len(exact) > 1 else same
        return -1, (f"columns: {name}: {target!r} names {len(both)} columns (positions "
                    f"{', '.join(str(i + 1) for i in both)}); give the position instead")
    if same:
        return same[0], None
    return -1, (f"columns: {name}: the file has no column {target!r} (its columns: "
                f"{show_header(cells, 30)})")


def mapping_lines(missing: Sequence[str], match: HeaderMatch,
                  wanted: Sequence[Wanted] = ()) -> str:
    """The ``columns:`` lines that would map ``missing``, guessing each from the unused cells."""
    phrases = {w.name: w.phrases for w in wanted}
    free = [i for i in match.unused() if match.header[i].strip()]
    lines = ["  columns:"]
    for name in missing:
        guess = _closest(name, phrases.get(name, ()), [(i, match.header[i]) for i in free])
        if guess is None:
            lines.append(f"    {name}: <its name in the file, or its position counting from 1>")
        else:
            free.remove(guess)
            lines.append(f"    {name}: {_yaml_text(match.header[guess])}      # column "
                         f"{guess + 1}?")
    return "\n".join(lines)


def _closest(name: str, phrases: Sequence[frozenset[str]],
             cells: list[tuple[int, str]]) -> int | None:
    want = frozenset().union(*phrases) if phrases else words(name.replace("_", " "))
    scored = []
    for i, cell in cells:
        overlap = len(want & words(cell)) / max(len(want | words(cell)), 1)
        ratio = difflib.SequenceMatcher(None, name, "_".join(sorted(words(cell)))).ratio()
        scored.append((max(overlap, ratio), -i, i))
    scored.sort(reverse=True)
    return scored[0][2] if scored and scored[0][0] >= 0.5 else None


def _yaml_text(text: str) -> str:
    return '"' + shown(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


__all__ = ["Wanted", "HeaderMatch", "match_header", "mapping_lines", "words", "shown",
           "show_header", "STOP_WORDS"]
