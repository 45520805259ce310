"""One run's log, as ``ahgd logs`` and the status page show it: the lines of its log file
(``<state dir>/logs/<run id>.jsonl``: stage logs, the framework's lines, worker output,
tracebacks) merged with the run's events that no line of the file carries.

An event line in the file has its ``seq``; an event recorded by a process that
keeps no run log (``ahgd cancel`` without a daemon, a script) has none there,
and is made into a line from the event log.  Following a running run reads
what was added since the last look; an event waits a moment for its own line
(which has the traceback) before it is made up from the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from state import ops_queries, runlogs

#: how long (s) a follower gives an event's own line to arrive before it makes one up
EVENT_GRACE_S = 1.0
#: payload keys a made-up event line leaves out (bulky; ``ahgd runs show`` has them)
_SKIP = {"output", "params", "stages", "owner", "warehouses", "validation"}
_WARN = {"stage.failed", "stage.timed_out", "stage.retrying", "stage.interrupted", "run.failed",
         "run.parked", "run.cancelled", "file.quarantined", "stage.invalidated"}
#: keys a text line shows in its own place, not as key=value
_PLACED = {"timestamp", "level", "event", "run_id", "pipeline", "stage", "attempt", "seq",
           "line", "stream", "traceback", "exception", "logger"}


def event_line(event: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A log line made from an event of the history."""
    payload = {k: v for k, v in (event.get("payload") or {}).items() if k not in _SKIP}
    return {"timestamp": event["ts"], "level": "warning" if event["type"] in _WARN else "info",
            "event": event["type"], "seq": event["seq"], "run_id": run_id,
            "stage": event.get("stage"), "attempt": event.get("attempt"), **payload,
            "from_history": True}


class RunLogReader:
    """Reads a run's log as it grows; ``stage`` keeps only that stage's lines."""

    def __init__(self, state_dir: Path, run_id: str, stage: str | None = None):
        self.path = runlogs.run_log_path(state_dir, run_id)
        self.run_id, self.stage = run_id, stage
        self.offset = 0
        self.last_seq = 0
        self.shown: set[int] = set()              # event seqs already shown
        self.waiting: dict[int, tuple[float, dict[str, Any]]] = {}

    def poll(self, history: Any, *, final: bool = True,
             clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
        """The lines added since the last call, oldest first.  ``final``: make up every
        event without a line now (else only those that waited :data:`EVENT_GRACE_S`)."""
        lines, self.offset = runlogs.read(self.path, self.offset)
        out = []
        for line in lines:
            seq = line.get("seq")
            if isinstance(seq, int):
                if seq in self.shown:
                    continue
                self.shown.add(seq)
                self.waiting.pop(seq, None)
            out.append(line)
        for event in ops_queries.run_events_after(history, self.run_id, self.last_seq):
            self.last_seq = event["seq"]
            if event["seq"] not in self.shown:
                self.waiting[event["seq"]] = (clock(), event)
        for seq, (seen, event) in sorted(self.waiting.items()):
            # an event recorded a while ago has no line coming (its process keeps no run
            # log): shown now, in its place among the file's lines, not after them
            if final or clock() - seen >= EVENT_GRACE_S or _age_s(event) >= EVENT_GRACE_S:
                del self.waiting[seq]
                self.shown.add(seq)
                out.append(event_line(event, self.run_id))
        out.sort(key=lambda r: str(r.get("timestamp") or ""))
        if self.stage is not None:
            out = [r for r in out if r.get("stage") == self.stage]
        return out


def _age_s(event: dict[str, Any]) -> float:
    """How long ago the history recorded ``event`` (0 when its time cannot be read)."""
    from state import parse_ts

    try:
        return time.time() - parse_ts(str(event["ts"])).timestamp()
    except (KeyError, ValueError, TypeError):
        return 0.0


def render(record: dict[str, Any]) -> str:
    """One line for a terminal: time, level, stage#attempt, event, the rest as key=value;
    printed output after a ``|``, a traceback on the lines below."""
    from pipelines.logs import render as key_values

    when = str(record.get("timestamp") or "")
    try:
        shown = datetime.fromisoformat(when.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except ValueError:
        shown = when
    where = record.get("stage") or "-"
    if record.get("attempt"):
        where = f"{where}#{record['attempt']}"
    level = str(record.get("level") or "info").upper()
    if record.get("event") == "output":
        mark = "|" if record.get("stream") != "stderr" else "!"
        text = f"{shown} {level:<7} {where:<14} {mark} {record.get('line', '')}"
    else:
        rest = {k: v for k, v in record.items() if k not in _PLACED and k != "from_history"}
        text = f"{shown} {level:<7} {where:<14} {key_values(record.get('event'), rest)}"
    trace = record.get("traceback") or record.get("exception")
    if trace:
        text += "\n" + "\n".join("    " + line for line in str(trace).rstrip().splitlines())
    return text
