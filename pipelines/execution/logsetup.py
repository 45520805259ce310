"""structlog set-up for the processes ahgd starts: the daemon, the CLI, workers.

JSON lines (journald keeps them; alerting reads them) with ``timestamp``,
``level`` and ``event`` first; pretty console output on a terminal.  Worker
processes read ``AHGD_LOG_FORMAT`` (``json`` or ``console``), which the
daemon sets, so a stage's ``context.log`` lines join the daemon's JSON log.
Outside such processes (a script) the framework logs through the standard
``logging`` hierarchy instead (:mod:`pipelines.logs`).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

LOG_FORMAT_ENV = "AHGD_LOG_FORMAT"


def configure_logging(*, json_lines: bool | None = None, level: str = "info",
                      stream: TextIO | None = None) -> None:
    import structlog

    from ..logs import use_structlog

    stream = stream or sys.stdout
    # libraries' own logging (watchdog says things when observers stop) stays quiet
    logging.getLogger("watchdog").setLevel(logging.ERROR)
    if json_lines is None:
        json_lines = not stream.isatty()
    renderer: Any = (structlog.processors.JSONRenderer(sort_keys=False) if json_lines
                     else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _drop_none,
            _order,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    use_structlog(True)  # the framework's own lines (pipelines.logs) go here too


def _order(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """timestamp, level, event first: the line reads left to right."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    return {**head, **event_dict}


def _drop_none(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event_dict.items() if v is not None}
