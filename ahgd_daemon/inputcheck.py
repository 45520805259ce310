"""A drop folder's ``input_check``, run in a short-lived child process, never in the daemon.

The daemon hashes and copies the bytes of a dropped file but never parses
them.  ``required_columns`` and the ``callable`` of a trigger's
``input_check`` run in a child (``python -P -m ahgd_daemon.inputcheck``) given
the daemon's own copy of the file (a regular file in the state directory,
under the name it was dropped with).  The daemon's intake thread waits for the
answer, never its main loop; after ``input_check.timeout`` (counted from when the
child's Python is up: ``children.exchange``) the child's whole process group is
killed.  A child not up within ``children.START_S`` raises ``ChildNotStarted``:
the machine's fault, so the file stays in its folder and is tried again.  A
check that hangs, crashes or runs out of memory takes only the child with it,
and the file is quarantined with a reason that says the fault is the check's,
not the file's.

``required_columns`` reads the header from the file's first MiB at most
(decompressed, for a ``.csv.gz`` or a CSV in a ZIP): a first line longer
than that is a quarantine reason that says so.  Of a spreadsheet it reads
the first sheet's header, found in its top rows (streamed, for an ``.xlsx``;
an ``.xls``/``.ods`` or a zipped one over 64 MiB is left to the run):
:func:`pipelines.tables.source.identify`.

Protocol: one JSON request on the child's stdin, one JSON line
``{"problem": text or null, "fix": "file" or "check"}`` on its stdout (whose
fault a problem is: the ``.reason.json``'s ``fix`` follows it).  Anything the
check prints goes to the daemon's stderr, never into the answer.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

#: a reason is at most this long (a check could return anything)
REASON_MAX = 2000


#: what to do about a file a check found bad, and about one it could not judge
FILE_FIX = "correct the file and drop it into the folder again"
CHECK_FIX = ("the file may well be fine: fix the input check (what it printed is in the "
             "daemon's log), then drop the file into the folder again")
TIMEOUT_FIX = ("the file may well be fine: make the check faster or raise input_check.timeout, "
               "then drop the file into the folder again")


class Refusal(str):
    """Why a file fails its check (the text itself), and what to do about it: ``fix`` (the
    ``.reason.json`` says it), which differs when the check, not the file, is at fault."""

    def __new__(cls, text: str, fix: str = FILE_FIX) -> "Refusal":
        self = super().__new__(cls, text)
        self.fix = fix
        return self


class CheckAborted(Exception):
    """The daemon is stopping: the check was cut short and decided nothing."""


def needed(folder: Any) -> bool:
    return bool(folder.required_columns or folder.check_callable
                or getattr(folder, "check_stage", None))


def run(folder: Any, path: Path, *, abort: threading.Event | None = None) -> Refusal | None:
    """Why the file at ``path`` fails ``folder``'s input check, or None when it passes."""
    if not needed(folder):
        return None
    what = _what(folder)
    request = json.dumps({"path": os.fspath(path), "required_columns": folder.required_columns,
                          "encoding": folder.encoding, "delimiter": folder.delimiter,
                          "callable": folder.check_callable,
                          "stage": getattr(folder, "check_stage", None)}).encode()
    from pipelines.execution.children import (ChildAborted, ChildTimedOut, exchange,
                                              kill_session, start_child)

    # the child imports what this process imported, wherever it came from, and never a
    # folder of the working directory in place of ahgd's packages; in its own session, a
    # timeout kills what it started too.  The timeout counts from when its Python is up: one
    # not up within children.START_S raises ChildNotStarted (the machine's fault: the file
    # stays in its folder and is tried again, never quarantined for it)
    proc = start_child("ahgd_daemon.inputcheck")
    try:
        out = exchange(proc, request, timeout=folder.check_timeout, what=what,
                       then="the file stays in its drop folder and is tried again",
                       abort=None if abort is None else abort.is_set)
    except ChildAborted:
        raise CheckAborted(what) from None
    except ChildTimedOut:
        return Refusal(f"{what} did not finish within {folder.check_timeout:g}s and "
                       "was stopped; the file may well be fine: make the check "
                       "faster or raise input_check.timeout, then drop the file "
                       "again", TIMEOUT_FIX)
    finally:
        kill_session(proc)
    try:
        answer = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        problem = answer["problem"]
    except (ValueError, IndexError, KeyError, TypeError):
        from pipelines.execution.pool import describe_exit   # the daemon's side only

        return Refusal(f"{what} {describe_exit(proc.returncode)} before it answered; that is a "
                       "fault of the check (or of the machine), not necessarily of the file: see "
                       "the daemon's log for the check's output, fix it, then drop the file "
                       "again", CHECK_FIX)
    if problem is None:
        return None
    fix = CHECK_FIX if answer.get("fix") == "check" else FILE_FIX
    return Refusal(str(problem)[:REASON_MAX], fix)


def _what(folder: Any) -> str:
    stage = getattr(folder, "check_stage", None)
    if stage and not folder.check_callable:
        return f"the input check (stage {stage['name']!r}, {stage['class']})"
    return (f"the input check {folder.check_callable}" if folder.check_callable
            else "the input check")


# -- the child ----------------------------------------------------------------------------

def required_columns_problem(path: Path, columns: list[str], encoding: str,
                             delimiter: str) -> str | None:
    """Which of ``columns`` the header of ``path`` lacks, in words; None when it has them all."""
    from pipelines import InputError
    from pipelines.tables.source import identify

    try:   # a CSV's first MiB (decompressed when gzip'd or zipped), each sheet's top rows
        found = identify(path, _Required(columns), encoding=encoding, delimiter=delimiter,
                         whole_file=False)
    except InputError as exc:
        return str(exc)
    if found.get("unchecked"):
        return None       # a spreadsheet read only whole: the run's extract stage checks it
    headers = [found["header"]] if found["format"] == "csv" else [
        s["header"] for s in found["sheets"]]
    header = max(headers, key=lambda h: _Required(columns).match(h, []).score)
    have = {h.strip().lower() for h in header}
    missing = [c for c in columns if c.lower() not in have]
    if not missing:
        return None
    shown = ", ".join(_cut(h.strip()) for h in header[:30])
    more = f", ... and {len(header) - 30} more" if len(header) > 30 else ""
    return f"missing required column(s) {', '.join(missing)} (the header has: {shown}{more})"


class _Required:
    """A header rated by how many of the required columns it names (a sheet's header row is
    the one naming most)."""

    key, rates = (), True

    def __init__(self, columns: list[str]):
        self.wanted = {c.strip().lower() for c in columns}
        self.what = f"a table with the required column(s) {', '.join(columns)}"

    def match(self, header: list[str], title: list[str]) -> Any:
        from pipelines.tables.source import HeaderFit

        have = sum(1 for h in header if h.strip().lower() in self.wanted)
        return HeaderFit([h if h.strip() else None for h in header], None, (have,))


def _cut(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else name[:limit - 3] + "..."


def _check(request: dict[str, Any]) -> str | None:
    path = Path(request["path"])
    if request.get("required_columns"):
        problem = required_columns_problem(path, request["required_columns"],
                                           request.get("encoding") or "utf-8",
                                           request.get("delimiter") or ",")
        if problem:
            return problem
    if request.get("stage"):
        problem = _stage_check(path, request["stage"])
        if problem:
            return problem
    dotted = request.get("callable")
    if not dotted:
        return None
    import importlib

    from pipelines import InputError

    module, _, attr = dotted.rpartition(".")
    check = getattr(importlib.import_module(module), attr)
    try:
        result = check(path)
    except InputError as exc:  # the check says the file is bad, in its words
        return str(exc)
    except OSError as exc:
        return Refusal(f"the input check {dotted} could not read the file: "
                       f"{exc.strerror or exc}", CHECK_FIX)
    except Exception as exc:  # noqa: BLE001 - the check's fault, said as such
        return Refusal(f"the input check {dotted} failed with {type(exc).__name__}: {exc}; that "
                       "is a fault of the check, not necessarily of the file: fix the check, "
                       "then drop the file again", CHECK_FIX)
    return str(result) if result else None


def _stage_check(path: Path, stage: dict[str, Any]) -> str | None:
    """``input_check.stage``: the stage's object, built with its config, checks the file.

    A stage that cannot be built here (its module does not import, its config is refused)
    cannot be built by the run either: the file passes, and the run fails saying why,
    keeping the file for ``ahgd retry`` rather than quarantining a file that may be fine."""
    import importlib

    what = f"the input check (stage {stage['name']!r}, {stage['class']})"
    try:
        module, _, attr = stage["class"].rpartition(".")
        obj = getattr(importlib.import_module(module), attr)(**stage["config"])
    except Exception as exc:  # noqa: BLE001 - the run reports it, as a configuration error
        print(f"{what} could not build the stage ({type(exc).__name__}: {exc}); the file is "
              "passed to the run, which reports it", file=sys.stderr)
        return None
    check = getattr(obj, "check_input", None)
    if check is None:
        return Refusal(f"{what} cannot check files: {stage['class']} has no check_input(path) "
                       "method; use input_check.callable instead", CHECK_FIX)
    try:
        result = check(path)
    except Exception as exc:  # noqa: BLE001 - the check's fault, said as such
        return Refusal(f"{what} failed with {type(exc).__name__}: {exc}; that is a fault of "
                       "the check, not necessarily of the file: fix the check, then drop the "
                       "file again", CHECK_FIX)
    return str(result) if result else None


def main(argv: list[str]) -> None:
    from pipelines.execution.children import child_begins, say_ready

    # a check module kept in the working directory imports, after ahgd's own packages;
    # whatever the check prints goes to stderr, not into the answer
    answer = child_begins(argv, ready=False)
    request = json.loads(sys.stdin.buffer.read())
    if request.get("required_columns"):  # ahgd's own imports: the start's time, not the check's
        import pipelines.tables.source  # noqa: F401
    say_ready(answer)
    problem = _check(request)
    fix = "check" if getattr(problem, "fix", FILE_FIX) != FILE_FIX else "file"
    os.write(answer, (json.dumps({"problem": problem, "fix": fix}) + "\n").encode())


if __name__ == "__main__":
    main(sys.argv)
