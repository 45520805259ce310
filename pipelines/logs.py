"""The framework's log lines: standard ``logging`` in a script, JSON lines in the daemon.

    log = get_logger("pipelines.engine")
    log.info("waiting_for_earlier_runs", run_id=run_id)

In a process ahgd set up itself (the daemon, the ``ahgd`` commands, the
daemon's workers: :func:`pipelines.execution.logsetup.configure_logging`),
or one whose own code configured structlog, every line goes through
structlog (the daemon's: JSON lines, or pretty on a terminal).  Everywhere
else (a script that calls ``pipeline.run()``) the same lines go through the
standard ``logging`` hierarchy under ``pipelines``, as ``event key=value ...``
messages (each record also carries ``ahgd_event`` and ``ahgd_fields`` for
structured handlers), so the usual controls work::

    logging.getLogger("pipelines").setLevel(logging.DEBUG)   # every detail
    logging.getLogger("pipelines").setLevel(logging.WARNING) # failures and retries only

A script that configures nothing still sees its runs: the first line adds a
handler printing INFO and above to stderr (``HH:MM:SS INFO pipelines.run:
stage.started ...``).  A script that configures logging itself
(``logging.basicConfig``, its own handlers on the root logger or on
``pipelines``) decides instead, and the default handler steps aside.

Loggers: ``pipelines.run`` (each event of a script's runs: ``run.started``,
``stage.started``, ``stage.completed``, ``stage.failed``, ``stage.retrying`` ...,
failures and retries at WARNING, details at DEBUG), ``pipelines.stage`` (what
stages log through ``context.log``), ``pipelines.engine``,
``pipelines.workers``, ``pipelines.monitor``, ``pipelines.checkpointing``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

ROOT = "pipelines"
_STRUCTLOG = False
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL,
           "exception": logging.ERROR, "msg": logging.INFO}


def use_structlog(on: bool = True) -> None:
    """Route the framework's lines to structlog (called by ``configure_logging``)."""
    global _STRUCTLOG
    _STRUCTLOG = on


def _via_structlog() -> bool:
    """ahgd configured structlog here, or the script's own code did."""
    if _STRUCTLOG:
        return True
    configured = _IS_CONFIGURED
    if configured is None:  # structlog imported on first use, then asked directly
        import structlog

        configured = _remember_structlog(structlog.is_configured)
    return configured()


def _remember_structlog(is_configured: Any) -> Any:
    global _IS_CONFIGURED
    _IS_CONFIGURED = is_configured
    return is_configured


#: structlog.is_configured, once structlog was imported here (an import statement per line
#: of a script's log was a share of each event's cost)
_IS_CONFIGURED: Any = None


#: name -> its standard logger (``logging.getLogger`` takes the module's lock on each call;
#: a logger, once made, is the same object for the life of the process)
_STD: dict[str, logging.Logger] = {}


def _std_logger(name: str) -> logging.Logger:
    logger = _STD.get(name)
    if logger is None:
        logger = _STD[name] = logging.getLogger(name)
    return logger


def get_logger(name: str = ROOT, **context: Any) -> "FrameworkLogger":
    """A logger for ``name`` (under ``pipelines``), with structlog's calling convention:
    ``log.info("event_name", key=value)`` and ``log.bind(key=value)``."""
    return FrameworkLogger(name, context)


class FrameworkLogger:
    """structlog's ``BoundLogger`` interface, decided per call: structlog in processes ahgd
    configured, the standard ``logging`` logger of the same name everywhere else."""

    __slots__ = ("name", "context")

    def __init__(self, name: str, context: dict[str, Any] | None = None):
        self.name = name
        self.context = dict(context or {})

    def bind(self, **values: Any) -> "FrameworkLogger":
        return FrameworkLogger(self.name, {**self.context, **values})

    def new(self, **values: Any) -> "FrameworkLogger":
        return FrameworkLogger(self.name, values)

    def unbind(self, *keys: str) -> "FrameworkLogger":
        return FrameworkLogger(self.name, {k: v for k, v in self.context.items() if k not in keys})

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's spelling
        if _via_structlog():
            return True
        script_default()
        return _std_logger(self.name).isEnabledFor(level)

    def log(self, level: int, event: str, **values: Any) -> None:
        name = str(logging.getLevelName(level)).lower()
        self._emit(name if name in _LEVELS else "info", event, values)

    def __getattr__(self, method: str) -> Any:
        if method not in _LEVELS:
            raise AttributeError(method)

        def emit(event: Any = None, *args: Any, **values: Any) -> None:
            if args:
                event = str(event) % args
            self._emit(method, event, values)
        return emit

    def _emit(self, method: str, event: Any, values: dict[str, Any]) -> None:
        if _via_structlog():
            import structlog

            logger = structlog.get_logger(self.name).bind(**self.context)
            getattr(logger, "error" if method == "exception" else method)(
                event, **({"exc_info": True} if method == "exception" else {}), **values)
            return
        level = _LEVELS[method]
        logger = _std_logger(self.name)
        script_default()
        if not logger.isEnabledFor(level):
            return
        exc_info = values.pop("exc_info", method == "exception") or None
        fields = {**self.context, **values}
        text = fields.pop("traceback", None)
        message = render(event, fields) + (f"\n{text.rstrip()}" if text else "")
        logger.log(level, "%s", message, exc_info=exc_info,
                   extra={"ahgd_event": str(event), "ahgd_fields": fields})


def render(event: Any, fields: dict[str, Any]) -> str:
    """``event key=value ...``: None values left out, text with spaces quoted."""
    parts = [str(event)]
    for key, value in fields.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else repr(value)
        if isinstance(value, str) and (not value or any(c in value for c in " \t\n=\"'")):
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


# --------------------------------------------------------------------------- scripts


class _ScriptHandler(logging.StreamHandler):
    """The handler a script that configured no logging gets on ``pipelines``."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                            "%H:%M:%S"))
        self.set_level = False

    @property  # type: ignore[override]
    def stream(self) -> Any:   # the stderr of now (pytest, a reassigned sys.stderr)
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_HANDLER: _ScriptHandler | None = None


def script_default() -> None:
    """Give a script that configured no logging a handler for INFO and above on stderr;
    take it away again once the script configures logging itself."""
    global _HANDLER
    if _via_structlog():
        return
    top = _std_logger(ROOT)
    configured = bool(logging.root.handlers) or any(h is not _HANDLER for h in top.handlers)
    if _HANDLER is not None:
        if configured:  # the script set logging up after our first line: it decides now
            top.removeHandler(_HANDLER)
            if _HANDLER.set_level and top.level == logging.INFO:
                top.setLevel(logging.NOTSET)
            _HANDLER = None
        return
    if configured:
        return
    _HANDLER = _ScriptHandler()
    top.addHandler(_HANDLER)
    if top.level == logging.NOTSET:
        top.setLevel(logging.INFO)
        _HANDLER.set_level = True


# --------------------------------------------------------------------------- runs


#: event type -> level of its line (others: DEBUG)
_RUN_LEVELS = {
    "run.started": "info", "run.completed": "info", "run.resumed": "info",
    "run.recovered": "info", "run.suspended": "info", "run.cancelled": "warning",
    "run.failed": "warning", "run.parked": "error",
    "stage.started": "info", "stage.completed": "info", "stage.skipped": "info",
    "stage.reused": "info", "stage.failed": "warning", "stage.timed_out": "warning",
    "stage.retrying": "warning", "stage.interrupted": "warning",
    "stage.invalidated": "warning",
}
#: what a line shows of an event's payload (the rest at DEBUG)
_SHOWN = ("trigger", "rows", "wall_s", "delay_s", "reason", "error", "retry")


class RunLogger:
    """An EventLog listener for a script's own log: one ``pipelines.run`` line per event.

    The daemon logs its events itself (``ahgd_daemon.logs.EventLogger``), so in a
    process ahgd configured this listener stays silent.
    """

    def __init__(self, pipeline: str):
        self.pipeline = pipeline
        self.log = get_logger("pipelines.run")

    def __call__(self, event: Any) -> None:
        if _STRUCTLOG:
            return
        level = _RUN_LEVELS.get(event.type, "debug")
        if not self.log.isEnabledFor(_LEVELS[level]):
            return
        data = event.payload if event.payload is not None else event.data()
        shown = {k: data[k] for k in _SHOWN if k in data}
        if isinstance(shown.get("retry"), dict):
            shown["retry"] = shown["retry"].get("why")
        getattr(self.log, level)(event.type, pipeline=self.pipeline, run_id=event.run_id,
                                 stage=event.stage, attempt=event.attempt, **shown)
        if self.log.isEnabledFor(logging.DEBUG):
            rest = {k: v for k, v in data.items() if k not in _SHOWN}
            if rest:
                self.log.debug(f"{event.type}.detail", run_id=event.run_id, stage=event.stage,
                               **rest)


__all__ = ["get_logger", "FrameworkLogger", "RunLogger", "use_structlog", "script_default",
           "render", "ROOT"]
