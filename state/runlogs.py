"""Per-run log files: ``<state dir>/logs/<run id>.jsonl``, one JSON object a line.

Whatever a run says goes here beside stdout/journald: what its stages log
(``context.log``), the framework's own lines about it, what its stages print
(worker output, one line each), tracebacks.  Every process that works on a
run appends to the same file (``O_APPEND``: one ``write`` per line, so lines
of concurrent writers never interleave); ``ahgd logs`` reads it back and adds
the run's events that no line of the file carries (an event recorded by a
process that keeps no run log).  A file holds only lines; it is never
rewritten, and it is a run's like ``data/<run id>/``, for a retention policy
to take with the run.

Appending never fails a run: a line that cannot be written (a full disk) is
dropped, and the event log keeps what matters.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .store import safe_name

LOGS_DIR = "logs"
SUFFIX = ".jsonl"
#: a line longer than this is cut (a stage that prints a megabyte without a newline)
MAX_LINE = 64 * 1024


def logs_dir(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / LOGS_DIR


def run_log_path(state_dir: str | os.PathLike[str], run_id: str) -> Path:
    """Where run ``run_id`` keeps its log lines."""
    return logs_dir(state_dir) / f"{safe_name(run_id)}{SUFFIX}"


def append(state_dir: str | os.PathLike[str], run_id: str, record: dict[str, Any]) -> bool:
    """Append ``record`` as one line of the run's log; False if it could not be written."""
    try:
        line = json.dumps(record, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return False
    return append_line(state_dir, run_id, line)


#: (state dir, run id) -> an O_APPEND descriptor of that run's log, the most recent last:
#: the daemon appends a line per event, and opening the file for each was a third of
#: the line's cost.  A file removed since (retention, by hand) is opened anew.
_OPEN: OrderedDict[tuple[str, str], int] = OrderedDict()
_OPEN_MAX = 16
_OPEN_LOCK = threading.Lock()


def _forget_open() -> None:  # a forked child keeps no descriptors of its parent's
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()
    while _OPEN:
        try:
            os.close(_OPEN.popitem()[1])
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_open)


def append_line(state_dir: str | os.PathLike[str], run_id: str, line: str) -> bool:
    """Append ``line`` (one JSON object, no newline) to the run's log; False if it could
    not be written."""
    data = (line[:MAX_LINE] if len(line) > MAX_LINE else line).encode("utf-8", "replace") + b"\n"
    key = (os.fspath(state_dir), run_id)
    try:
        with _OPEN_LOCK:
            fd = _OPEN.get(key)
            if fd is not None:
                if os.fstat(fd).st_nlink:
                    _OPEN.move_to_end(key)
                else:  # removed since it was opened: a new file for the run's new lines
                    del _OPEN[key]
                    os.close(fd)
                    fd = None
            if fd is None:
                fd = _open(key)
                _OPEN[key] = fd
                while len(_OPEN) > _OPEN_MAX:
                    os.close(_OPEN.popitem(last=False)[1])
            os.write(fd, data)
    except (OSError, ValueError):
        return False
    return True


def _open(key: tuple[str, str]) -> int:
    # the path as a string: the daemon appends a line per event, and three Path objects a
    # line were a tenth of its cost
    path = os.path.join(key[0], LOGS_DIR, f"{safe_name(key[1])}{SUFFIX}")
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)


def close_all() -> None:
    """Close the run logs kept open (a test's state directory about to go, say)."""
    with _OPEN_LOCK:
        while _OPEN:
            os.close(_OPEN.popitem()[1])


def read(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The whole lines of a run log from byte ``offset`` on, and the offset after them (a
    line still being written is left for the next read).  A line that is not JSON comes
    back as ``{"event": "unreadable log line", "line": ...}``; no file, no lines."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for raw in data[:end].splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = {"event": "unreadable log line", "line": raw.decode("utf-8", "replace")}
        records.append(record)
    return records, offset + end
