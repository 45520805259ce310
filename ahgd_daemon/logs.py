"""Structured logs: JSON lines on stdout (journald keeps them), pretty on a terminal.

Every event appended to the event log is also one log line with the same
fields (``event`` is the event type, plus ``seq``, ``pipeline``, ``run_id``,
``stage``, ``attempt`` where they apply).  Alerts are lines with
``alert: true`` and a ``severity``.  Where run logs are kept, a failed attempt's
line carries its traceback into the run's log (not to stdout).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TextIO

import structlog

from pipelines.execution.logsetup import NO_RUN_LOG, RUN_LOG_ONLY
from state import Event, EventLog

#: payload keys too bulky for a log line (they stay in the event log)
_SKIP_KEYS = {"traceback", "output", "params", "stages", "owner"}
#: retention's removals: logged with their run's id, but not copied into the run's log
_REMOVALS = ("data.expired", "file.expired")


def configure(*, json_lines: bool | None = None, level: str = "info",
              stream: TextIO | None = None, terminal_level: str | None = None) -> None:
    """Configure structlog once, at the process boundary (CLI or daemon start)."""
    from pipelines.execution.logsetup import configure_logging

    configure_logging(json_lines=json_lines, level=level, stream=stream,
                      terminal_level=terminal_level)


class EventLogger:
    """An EventLog listener: one log line per appended event."""

    def __init__(self, log: EventLog, logger: Any = None):
        self._log = log
        self._logger = logger or structlog.get_logger("ahgd.events")
        self._pipelines: OrderedDict[str, str] = OrderedDict()
        self._cached: tuple[tuple[Any, ...], Any] | None = None

    def _bound(self) -> Any:
        """The logger, bound once for the configuration in force (structlog's lazy proxy
        builds a new bound logger, and a new ``PrintLogger``, for every line)."""
        logger = self._logger
        # structlog's own objects, not its public API: a structlog without them gets the proxy
        proxy = getattr(getattr(structlog, "_config", None), "BoundLoggerLazyProxy", None)
        config = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
        if proxy is None or config is None or not isinstance(logger, proxy):
            return logger
        try:
            key = (config.default_processors, config.default_wrapper_class,
                   config.logger_factory, config.default_context_class)
        except AttributeError:
            return logger
        cached = self._cached
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            cached = self._cached = (key, logger.bind())
        return cached[1]

    def pipeline_of(self, event: Event) -> str | None:
        data = event.payload or {}
        if event.type == "run.requested":
            name = data.get("pipeline")
            if name and event.run_id:
                self._remember(event.run_id, name)
            return name
        if event.type.startswith(("file.", "schedule.", "pipeline.")):
            return data.get("pipeline")
        if event.run_id is None or event.type.startswith("orchestration."):
            return event.stage if event.type.startswith("orchestration.") else None
        name = self._pipelines.get(event.run_id)
        if name is None:
            run = self._log.run(event.run_id)
            name = run.pipeline if run else None
            if name:
                self._remember(event.run_id, name)
        return name

    def _remember(self, run_id: str, name: str) -> None:
        self._pipelines[run_id] = name
        if len(self._pipelines) > 4096:
            self._pipelines.popitem(last=False)

    def __call__(self, event: Event) -> None:
        if event.type.startswith("alert."):
            return  # the monitor logged it already, as the line alerting reads (alert=true)
        data = event.payload if event.payload is not None else event.data()
        fields = {k: v for k, v in data.items() if k not in _SKIP_KEYS}
        level = "warning" if event.type in ("stage.failed", "stage.timed_out", "stage.retrying",
                                            "file.quarantined", "file.refused", "run.failed",
                                            "run.parked") else "info"
        for key in ("seq", "pipeline", "run_id", "stage", "attempt", "event"):
            fields.pop(key, None)
        if data.get("traceback"):  # too bulky for stdout; the run's own log keeps it
            fields[RUN_LOG_ONLY] = {"traceback": data["traceback"]}
        if event.type in _REMOVALS:  # of the run's files, its log among them: not into it
            fields[NO_RUN_LOG] = True
        # a pause names a pipeline, not a run (its run_id only indexes it in the log)
        run_id = None if event.type.startswith("pipeline.") else event.run_id
        getattr(self._bound(), level)(
            event.type, seq=event.seq, pipeline=self.pipeline_of(event), run_id=run_id,
            stage=event.stage, attempt=event.attempt, **fields)
