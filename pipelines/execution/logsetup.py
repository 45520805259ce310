"""structlog set-up for the processes ahgd starts: the daemon, the CLI, workers.

JSON lines (journald keeps them; alerting reads them) with ``timestamp``,
``level`` and ``event`` first; pretty console output on a terminal.  Worker
processes read ``AHGD_LOG_FORMAT`` (``json`` or ``console``), which the
daemon sets, so a stage's ``context.log`` lines join the daemon's JSON log.
Outside such processes (a script) the framework logs through the standard
``logging`` hierarchy instead (:mod:`pipelines.logs`).  Where run logs are
kept (the daemon and its workers, ``ahgd run``), each line that names a
``run_id`` is also appended to that run's ``<state dir>/logs/<run id>.jsonl``.
"""

from __future__ import annotations

import json as _json
import logging
import sys
from typing import Any, TextIO

LOG_FORMAT_ENV = "AHGD_LOG_FORMAT"
#: the state directory whose ``logs/<run id>.jsonl`` get a copy of every line about a run
#: (set by the daemon for its workers; :func:`keep_run_logs` in the process itself)
RUN_LOGS_ENV = "AHGD_RUN_LOGS"
#: a line's keys that go to the run's own log only, not to stdout (a traceback, say)
RUN_LOG_ONLY = "run_log_only"
#: a line that names a run but is not copied into the run's log: retention removing the
#: run's files (the log among them: a copy would make it again, and the next collection
#: would remove it again, for ever)
NO_RUN_LOG = "no_run_log"

_run_logs: str | None = None


def keep_run_logs(state_dir: Any) -> None:
    """From now on, every line of this process that names a ``run_id`` is also appended to
    that run's log in ``state_dir`` (``state.runlogs``); None stops it."""
    global _run_logs
    _run_logs = None if state_dir is None else str(state_dir)


def _tee_to_run_log(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of each line about a run into that run's log file, whatever the renderer."""
    only = event_dict.pop(RUN_LOG_ONLY, None)
    run_id = None if event_dict.pop(NO_RUN_LOG, None) else event_dict.get("run_id")
    if _run_logs is not None and isinstance(run_id, str) and run_id:
        from state.runlogs import append

        record = {k: v for k, v in event_dict.items() if v is not None}
        if isinstance(only, dict):
            record.update(only)
        append(_run_logs, run_id, _order(None, "", record))
    return event_dict


def configure_logging(*, json_lines: bool | None = None, level: str = "info",
                      stream: TextIO | None = None, terminal_level: str | None = None) -> None:
    """Lines of ``level`` and above are logged; with ``terminal_level`` (a higher level),
    those below it go only to their run's log (when run logs are kept), not to ``stream``."""
    import os

    import structlog

    from ..logs import use_structlog

    if os.environ.get(RUN_LOGS_ENV):  # a worker of the daemon: keep its runs' logs too
        keep_run_logs(os.environ[RUN_LOGS_ENV])
    stream = stream or sys.stdout
    # libraries' own logging (watchdog says things when observers stop) stays quiet
    logging.getLogger("watchdog").setLevel(logging.ERROR)
    if json_lines is None:
        json_lines = not stream.isatty()
    # JSON lines: one processor tees, orders and renders (the line is rendered once, and the
    # run's log gets the same text when it would be the same); a terminal: pretty lines
    last: list[Any] = ([_json_line] if json_lines else
                       [_tee_to_run_log, _drop_none, _order,
                        structlog.dev.ConsoleRenderer(colors=stream.isatty())])
    shown = _level_number(terminal_level)
    if shown > _level_number(level):
        # teed first, then kept off the terminal: the run's log has the line, stdout not
        last = [_shown_from(shown, _json_line)] if json_lines else \
            [_tee_to_run_log, _shown_from(shown, None), *last[1:]]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *last,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    use_structlog(True)  # the framework's own lines (pipelines.logs) go here too


def _level_number(name: str | None) -> int:
    number = logging.getLevelName(name.upper()) if isinstance(name, str) else logging.NOTSET
    return number if isinstance(number, int) else logging.NOTSET


def _shown_from(level: int, render: Any) -> Any:
    """A processor that drops lines below ``level``: after ``render`` (``_json_line``, which
    tees as it renders) when given, else at once (the tee having run before it)."""
    import structlog

    def processor(logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        shown = _level_number(event_dict.get("level")) >= level
        if render is not None:
            event_dict = render(logger, method, event_dict)
        if not shown:
            raise structlog.DropEvent
        return event_dict

    return processor


def _order(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """timestamp, level, event first: the line reads left to right."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    return {**head, **event_dict}


def _drop_none(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event_dict.items() if v is not None}


def _json_line(_: Any, __: str, event_dict: dict[str, Any]) -> str:
    """``_tee_to_run_log``, ``_drop_none``, ``_order`` and structlog's ``JSONRenderer``
    (``sort_keys=False``) in one: the same stdout line, the same run-log line, and the
    run-log line is the stdout line itself whenever the two would be equal (no run-log-only
    keys, nothing escaped as ``\\u``, no value rendered by the fallback)."""
    only = event_dict.pop(RUN_LOG_ONLY, None)
    skip = event_dict.pop(NO_RUN_LOG, None)
    record = _order(None, "", _drop_none(None, "", event_dict))
    # a value JSON cannot carry: the run's log renders it with str(), stdout with repr()
    fell_back: list[Any] = []
    try:
        # json.dumps without arguments uses the json module's one shared encoder; with
        # default= it builds a new encoder for every line (a tenth of a daemon's line)
        line = _json.dumps(record)
    except TypeError:
        def fallback(obj: Any) -> Any:  # what JSONRenderer's own fallback gives (private)
            fell_back.append(obj)
            method = getattr(obj, "__structlog__", None)
            return method() if callable(method) else repr(obj)

        line = _json.dumps(record, default=fallback)
    run_id = None if skip else event_dict.get("run_id")
    if _run_logs is not None and isinstance(run_id, str) and run_id:
        from state import runlogs

        if isinstance(only, dict) or fell_back or "\\u" in line:
            if isinstance(only, dict):
                record.update(only)
            runlogs.append(_run_logs, run_id, record)
        else:
            runlogs.append_line(_run_logs, run_id, line)
    return line
