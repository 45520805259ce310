"""Whether DuckDB (RE2) accepts a ``pattern`` rule's regular expression, without loading
DuckDB into a process that does not otherwise need it (the daemon: 69 MB of library).

A regular expression is judged in one of three ways, the first that applies:

1. it uses only a small common subset of the syntax (literals, ``.``, ``^``, ``$``,
   ``|``, groups ``(...)`` and ``(?:...)``, classes ``[...]`` of literals and ranges,
   ``\\d \\w \\s \\b`` and their capitals, escaped punctuation, quantifiers ``* + ?
   {n} {n,} {n,m}`` with counts up to 1000), which RE2 always accepts: valid
   (:func:`plainly_valid`; ``tests/pipelines/test_regexes.py`` checks this against
   DuckDB on thousands of generated expressions);
2. DuckDB is already loaded here (a script, a worker): asked here;
3. else asked in a short-lived child (``python -m pipelines.validation.regexes``),
   all of one call's expressions at once.

Verdicts are kept per process, at most :data:`KEPT` of them.  Protocol of the
child: a JSON list of expressions on stdin; a JSON object, expression -> the
reason DuckDB gives or null, on stdout.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import threading
from collections.abc import Iterable

#: verdicts kept per process (the oldest is forgotten first)
KEPT = 1024
#: how long the child may take (importing DuckDB takes ~0.2 s)
TIMEOUT_S = 60.0
_MAX_COUNT = 1000          # RE2 refuses a repetition count over 1000
_PUNCT = frozenset(string.punctuation)
_CLASS_ESCAPES = frozenset("dDwWsS")
_verdicts: dict[str, str | None] = {}
_lock = threading.Lock()


def problems(regexes: Iterable[str]) -> dict[str, str | None]:
    """Each expression -> why RE2 refuses it (DuckDB's words), or None when it is valid."""
    regexes = list(regexes)
    with _lock:
        found = {r: _verdicts[r] for r in regexes if r in _verdicts}
    todo = list(dict.fromkeys(r for r in regexes if r not in found))
    unsure = [r for r in todo if not plainly_valid(r)]
    found.update((r, None) for r in todo)
    if unsure:
        found.update(_in_duckdb(unsure) if "duckdb" in sys.modules else _in_child(unsure))
    with _lock:
        for regex in todo:
            if len(_verdicts) >= KEPT:
                del _verdicts[next(iter(_verdicts))]
            _verdicts[regex] = found[regex]
    return {r: found[r] for r in regexes}


def problem(regex: str) -> str | None:
    """Why RE2 refuses ``regex``, or None when it is valid."""
    return problems([regex])[regex]


def _in_duckdb(regexes: list[str]) -> dict[str, str | None]:
    import duckdb

    out: dict[str, str | None] = {}
    con = duckdb.connect(":memory:")
    try:
        for regex in regexes:
            try:
                con.execute("SELECT regexp_matches('', ?)", [regex])
                out[regex] = None
            except duckdb.Error as exc:
                out[regex] = str(exc).splitlines()[0].removeprefix("Invalid Input Error: ")
    finally:
        con.close()
    return out


def _in_child(regexes: list[str]) -> dict[str, str | None]:
    """Asked in a child; if the child cannot answer (DuckDB broken, killed once it is up),
    asked here, so that a broken environment shows its own error rather than a wrong verdict.
    A child that does not come up raises ``ChildNotStarted`` instead: asked here, DuckDB
    (69 MB) would stay in this process (a daemon's) for good."""
    from ..execution.children import ChildTimedOut, exchange, kill_session, start_child

    proc = start_child("pipelines.validation.regexes", stderr=subprocess.DEVNULL)
    try:
        out = exchange(proc, json.dumps(regexes).encode(), timeout=TIMEOUT_S,
                       what="the regular-expression check",
                       then="check the configuration again once the machine has room")
        answer = json.loads(out.decode("utf-8")) if proc.returncode == 0 else None
    except (ChildTimedOut, ValueError):
        answer = None
    finally:
        kill_session(proc)  # and reaped
    if not isinstance(answer, dict) or any(r not in answer for r in regexes):
        return _in_duckdb(regexes)
    return {r: answer[r] for r in regexes}


# ------------------------------------------------------------------ the common subset

def plainly_valid(regex: str) -> bool:
    """True when ``regex`` keeps to a subset of the syntax RE2 always accepts; False means
    "ask DuckDB", not "invalid"."""
    return _Subset(regex).ok()


class _Subset:
    def __init__(self, text: str):
        self.s, self.i = text, 0

    def ok(self) -> bool:
        if any(not c.isprintable() for c in self.s):
            return False
        depth, can_repeat, repeated = 0, False, False
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c in "*+?{":
                if not can_repeat or repeated or not self._quantifier(c):
                    return False
                repeated = True
                continue
            repeated = False
            if c == "(":
                if self.s.startswith("?", self.i):
                    if not self.s.startswith("?:", self.i):
                        return False
                    self.i += 2
                depth, can_repeat = depth + 1, False
            elif c == ")":
                if depth == 0:
                    return False
                depth, can_repeat = depth - 1, True
            elif c in "^$|":
                can_repeat = False
            elif c == "\\":
                e = self._escape()
                if e is None:
                    return False
                can_repeat = e not in "bB"
            elif c == "[":
                if not self._class():
                    return False
                can_repeat = True
            elif c in "]}":
                return False
            else:                                   # a literal, or "."
                can_repeat = True
        return depth == 0

    def _quantifier(self, c: str) -> bool:
        if c == "{":
            close = self.s.find("}", self.i)
            if close < 0:
                return False
            lo, comma, hi = self.s[self.i:close].partition(",")
            if not lo.isdigit() or not lo.isascii() or (hi and (not hi.isdigit()
                                                                or not hi.isascii())):
                return False
            if int(lo) > _MAX_COUNT or (hi and (int(hi) > _MAX_COUNT or int(hi) < int(lo))):
                return False
            self.i = close + 1
        if self.s.startswith("?", self.i):          # lazy
            self.i += 1
        return True

    def _escape(self, *, in_class: bool = False) -> str | None:
        """The escaped character (consumed), or None when it is outside the subset."""
        if self.i >= len(self.s):
            return None
        e = self.s[self.i]
        if e in _PUNCT or e in _CLASS_ESCAPES or (not in_class and e in "bB"):
            self.i += 1
            return e
        return None

    def _class(self) -> bool:
        if self.s.startswith("^", self.i):
            self.i += 1
        items = 0
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == "]":
                return items > 0
            if c == "[":
                return False
            if c == "-":                            # a literal only first or last
                if items and not self.s.startswith("]", self.i):
                    return False
                items += 1
                continue
            if c == "\\":
                e = self._escape(in_class=True)
                if e is None:
                    return False
                if e in _CLASS_ESCAPES:
                    items += 1
                    continue
                c = e
            if self.s.startswith("-", self.i) and not self.s.startswith("-]", self.i):
                self.i += 1                         # a range c-d
                if self.i >= len(self.s):
                    return False
                d = self.s[self.i]
                self.i += 1
                if d == "\\":
                    d = self._escape(in_class=True)
                    if d is None or d in _CLASS_ESCAPES:
                        return False
                elif d in "[]":
                    return False
                if ord(d) < ord(c):
                    return False
            items += 1
        return False


def _main(argv: list[str]) -> None:
    from ..execution.children import child_begins, say_ready

    answer = child_begins(argv, ready=False)
    import duckdb  # noqa: F401  (ahgd's own import: the start's time, not the check's)

    say_ready(answer)
    regexes = json.loads(sys.stdin.buffer.read())
    os.write(answer, json.dumps(_in_duckdb([str(r) for r in regexes])).encode())


if __name__ == "__main__":
    _main(sys.argv)
