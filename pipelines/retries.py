"""Whether a failed stage attempt is tried again, and why: one rule for every stage.

An error a retry cannot fix is not retried: a programming error
(``AttributeError``, ``TypeError``, ``NameError``, ``ImportError``,
``KeyError`` ...), a data error (``ValueError``, DuckDB's conversion errors),
an error in the SQL (DuckDB's binder, parser and catalog errors), a
configuration error, a validation failure or any other ``InputError``.  An
error that may pass is retried, up to ``retry_attempts``: I/O (``OSError``), a
timeout, a worker process that died, and anything not known to be permanent.
A stage says otherwise with ``retry_on`` / ``no_retry_on`` (exception classes,
by builtin name or dotted path: the most specific class that matches decides),
or at the raise itself: :class:`RetryLater` is retried (after its delay, if it
gives one), ``InputError`` never.  A full disk is neither: the run waits for
room (:mod:`pipelines.execution.diskfull`).

:func:`classify` decides for an exception (in the worker, where it was
raised); :func:`after_failure` decides for the attempt (in the engine, with
the retry budget), and the ``stage.failed`` event records both answers as
``"retry": {"decision": ..., "why": ...}``.
"""

from __future__ import annotations

import builtins
import importlib
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable

from state.errors import AhgdError, ObjectStoreError, did_you_mean

from .durations import format_duration, parse_duration
from .execution.diskfull import disk_full_wait
from .errors import ConfigError, InputError, StageError, StageOutputError, ValidationFailed, \
    WarehouseDamaged

__all__ = ["RetryLater", "Decision", "classify", "after_failure", "failure_message",
           "exception_names", "name_problem", "retry_key_names", "same_class_in_both"]


class RetryLater(StageError):
    """Try this stage again later: ``raise RetryLater("the API is busy", after="PT5M")``.

    Retried whatever the error's kind, within the stage's ``retry_attempts``;
    ``after`` (a ``timedelta``, seconds, ISO 8601 text or ``"5m"``) replaces the
    stage's ``retry_delay`` for this one wait.
    """

    retryable = True

    def __init__(self, message: str = "the stage asked to be tried again later", *,
                 after: Any = None):
        super().__init__(message)
        self.after = None if after is None else parse_duration(after, what="RetryLater(after=...)")


@dataclass(frozen=True)
class Decision:
    """Whether an attempt's error is retried, in words; ``after`` a delay the stage asked for;
    ``spent``: it would have been, but the stage's retries are used up."""

    retry: bool
    why: str
    after: float | None = None
    spent: bool = False

    def record(self) -> dict[str, Any]:
        """The ``retry`` entry of a ``stage.failed`` / ``stage.timed_out`` payload."""
        return {"decision": self.retry, "why": self.why}


_PROGRAMMING = (AttributeError, TypeError, NameError, ImportError, LookupError, SyntaxError,
                AssertionError, NotImplementedError)
_DATA = (ValueError, ArithmeticError)


def classify(exc: BaseException, retry_on: Iterable[str] = (),
             no_retry_on: Iterable[str] = ()) -> Decision:
    """Would a retry of the attempt that raised ``exc`` help?  (Budget not considered.)"""
    name = shown_name(type(exc))
    if isinstance(exc, RetryLater):
        when = "" if exc.after is None else f" after {format_duration(exc.after)}"
        return Decision(True, f"the stage asked to be tried again{when} (RetryLater)",
                        None if exc.after is None else exc.after.total_seconds())
    if isinstance(exc, ValidationFailed):
        return Decision(False, f"{name}: the data broke a validation rule, and a retry would "
                               "check the same data")
    if isinstance(exc, InputError):
        return Decision(False, f"{name} says the input is bad, and a retry would read the same "
                               "input")
    chosen = _chosen(type(exc), tuple(retry_on), tuple(no_retry_on))
    if chosen is not None:
        return chosen
    return _by_kind(exc, name)


def _chosen(cls: type, retry_on: tuple[str, ...], no_retry_on: tuple[str, ...]) -> Decision | None:
    """What the stage's retry_on / no_retry_on say: the first class of the error's MRO named
    in either list decides (``no_retry_on: [FileNotFoundError]`` beats ``retry_on: [OSError]``)."""
    if not retry_on and not no_retry_on:
        return None
    lists = [(entry, False, "no_retry_on") for entry in no_retry_on] + \
            [(entry, True, "retry_on") for entry in retry_on]
    named = [(_resolved(entry), entry, retry, key) for entry, retry, key in lists]
    for base in cls.__mro__:
        for target, entry, retry, key in named:
            if target is base:
                what = shown_name(cls)
                if base is not cls:
                    what += f" (a subclass of {shown_name(base)})"
                return Decision(retry, f"{what} is in the stage's {key}")
    return None


def _by_kind(exc: BaseException, name: str) -> Decision:
    if isinstance(exc, ConfigError):
        return Decision(False, f"{name} is a configuration error: fix the configuration, then "
                               "retry the run")
    if isinstance(exc, StageOutputError):
        return Decision(False, f"{name}: a retry would return the same output")
    if isinstance(exc, WarehouseDamaged):
        return Decision(False, f"{name}: the warehouse file must be moved aside first")
    if isinstance(exc, StageError):
        retry = bool(getattr(exc, "retryable", True))
        return Decision(retry, f"{name}.retryable is {retry}")
    if isinstance(exc, ObjectStoreError):  # the bucket's fault, not the stage's: it may be back
        if exc.setting:                      # unless one of its settings is wrong
            return Decision(False, f"{name}: the object store's {exc.setting} setting is wrong; "
                                   "fix it, then retry the run")
        return Decision(True, f"{name}: the object store could not be reached or refused the "
                              "request, which may pass")
    if isinstance(exc, AhgdError):
        return Decision(False, f"{name} is a problem a retry would meet again")
    duck = _duckdb_kind(exc)
    if duck is not None:
        return Decision(duck == "", f"{name} {duck or 'may pass'}")
    if isinstance(exc, _PROGRAMMING):
        return Decision(False, f"{name} is a programming error: a retry would run the same code")
    if isinstance(exc, _DATA):
        return Decision(False, f"{name} is a data error: a retry would read the same data")
    if isinstance(exc, OSError):
        return Decision(True, f"{name} is an I/O error, which may pass")
    return Decision(True, f"{name} is not known to be permanent")


#: what DuckDB's InvalidInputException says when a query's parameters and values differ
_PARAMETER_MISMATCH = ("Parameter argument/count mismatch",
                       "Values were not provided for the following parameters")


def _duckdb_kind(exc: BaseException) -> str | None:
    """How a DuckDB error is described when it is permanent ("" when it may pass), or None
    when ``exc`` is not DuckDB's."""
    duckdb = sys.modules.get("duckdb")
    if duckdb is None or not isinstance(exc, getattr(duckdb, "Error", ())):
        return None
    invalid = getattr(duckdb, "InvalidInputException", ())
    if isinstance(exc, invalid) and any(m in str(exc) for m in _PARAMETER_MISMATCH):
        # the query's parameters and the values given for them do not match: the code's
        # fault, whatever the data (the same words as a ProgrammingError's, below)
        return "is an error in the SQL: a retry would run the same query"
    data = (duckdb.DataError, duckdb.IntegrityError, invalid)
    if isinstance(exc, data):   # InvalidInput: a malformed CSV, as often as a bad argument
        return "is a data error: a retry would read the same data"
    if isinstance(exc, (duckdb.ProgrammingError, duckdb.NotSupportedError)):
        return "is an error in the SQL: a retry would run the same query"
    return ""


def after_failure(outcome: Any, cfg: Any, tries: int, attempt: int, rng: Any, *,
                  stopping: bool) -> Decision:
    """Is ``attempt``, which ended with ``outcome`` (a failure or timeout), tried again, and
    after how long (``after``, in seconds, when it is)?

    ``tries`` counts the stage's attempts against ``cfg.retry_attempts``; a full disk
    waits for room whatever they say.  ``rng`` gives the +/-20 % jitter of the delay.
    """
    if outcome.disk_full:
        return Decision(True, "the disk is full: the run waits for room (not counted against "
                              "retry_attempts)", disk_full_wait(attempt))
    why = outcome.retry_why or _explain(outcome)
    if not outcome.retryable:
        return Decision(False, why)
    if stopping:
        return Decision(False, f"{why}, but the run is stopping")
    if tries > cfg.retry_attempts:
        used = ("retry_attempts is 0" if cfg.retry_attempts == 0 else
                f"its {cfg.retry_attempts} retr{'y is' if cfg.retry_attempts == 1 else 'ies are'} "
                "used up")
        return Decision(False, f"{why}, but {used}", spent=True)
    if outcome.retry_after is not None:
        return Decision(True, why, outcome.retry_after)
    return Decision(True, why, cfg.retry_delay_for(tries, jitter=rng.uniform(0.8, 1.2)))


def _explain(outcome: Any) -> str:
    """Why, for an attempt that ended without an exception of its own (a timeout, a worker)."""
    if outcome.timed_out:
        return "a timeout may not happen again"
    if outcome.error_type == "WorkerDied":
        return "a worker process that died may not die again"
    if outcome.error_type == "WorkerStartFailed":
        return "a worker process may start next time"
    kind = outcome.error_type or "the error"
    return f"{kind} may pass" if outcome.retryable else f"{kind} would happen again"


def failure_message(stage: str, tries: int, decision: Decision, error: str | None) -> str:
    """The run's error when ``stage`` failed for good."""
    why = "" if decision.spent else f" (not retried: {decision.why})"
    return f"stage {stage!r} failed after {tries} attempt(s){why}: {error}"


# --------------------------------------------------------------------------- names


def shown_name(cls: type) -> str:
    """How an exception class is named in messages: ``KeyError``, ``duckdb.BinderException``,
    ``InputError`` (ahgd's own), ``mypkg.errors.Busy``."""
    module = cls.__module__ or ""
    if module == "builtins" or module.split(".")[0] in ("pipelines", "state"):
        return cls.__qualname__
    if module.lstrip("_").split(".")[0] == "duckdb":
        return f"duckdb.{cls.__name__}"
    return f"{module}.{cls.__qualname__}"


def exception_names(values: Any, *, where: str, key: str) -> tuple[str, ...]:
    """``retry_on`` / ``no_retry_on`` as given in Python (a name, a class, or a list of
    them) as names, each checked (imported); ConfigError with a did-you-mean otherwise."""
    if values is None:
        return ()
    items = [values] if isinstance(values, (str, type)) else values
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise ConfigError(f"{where}: {key} is {values!r}; give a list of exception classes, "
                          "by builtin name ('OSError') or dotted path ('duckdb.IOException')")
    names = []
    for item in items:
        if isinstance(item, type) and issubclass(item, BaseException):
            item = item.__name__ if item.__module__ == "builtins" else \
                f"{item.__module__}.{item.__qualname__}"
        problem = name_problem(item, key=key)
        if problem:
            raise ConfigError(f"{where}: {key}: {problem}")
        names.append(item)
    return tuple(names)


def name_problem(name: Any, *, key: str, import_modules: bool = True) -> str | None:
    """What is wrong with one ``retry_on`` / ``no_retry_on`` entry, or None.

    A name without a dot is a builtin exception; a dotted one is imported (not
    when ``import_modules`` is False: its form is checked only).
    """
    if not isinstance(name, str) or not name:
        return (f"{name!r} is not an exception class; name one by builtin name ('OSError') or "
                "dotted path ('duckdb.IOException')")
    module, _, attr = name.rpartition(".")
    if not all(part.isidentifier() for part in name.split(".")):
        return f"{name!r} is not a class name or a dotted path such as package.module.Error"
    if not module:
        found = getattr(builtins, name, None)
        if not _is_exception(found):
            known = [n for n in dir(builtins) if _is_exception(getattr(builtins, n))]
            hint = did_you_mean(name, known)
            return (f"{name!r} is not a builtin exception"
                    f"{'; ' + hint if hint else '; give a dotted path for one of your own'}")
    elif not import_modules:
        return None
    else:
        try:
            found = getattr(importlib.import_module(module), attr, None)
        except ImportError as exc:
            return f"cannot import module {module!r}: {exc}"
        except (Exception, SystemExit) as exc:
            return f"importing module {module!r} raised {type(exc).__name__}: {exc}"
        if found is not None and not _is_exception(found):
            what = "class" if isinstance(found, type) else type(found).__name__
            return f"{name!r} is a {what}, not an exception class"
        if not _is_exception(found):
            mod = sys.modules[module]
            hint = did_you_mean(attr, [n for n in dir(mod) if _is_exception(getattr(mod, n, None))])
            return f"module {module!r} has no exception class {attr!r}{'; ' + hint if hint else ''}"
    if issubclass(found, InputError):
        return (f"{shown_name(found)} is never retried (it says the input is bad, and a retry "
                f"would read the same input); leave it out of {key}")
    if issubclass(found, RetryLater):
        return (f"{shown_name(found)} is always retried (the stage asks for it); leave it out "
                f"of {key}")
    return None


def retry_key_names(data: Any) -> list[tuple[tuple, str, str]]:
    """``(key path, key, dotted name)`` of each dotted ``retry_on`` / ``no_retry_on`` entry
    of a pipeline file's data whose form is right, read from the data itself (so they are
    checked even when other keys are wrong).  Whether each imports and is an exception
    class is for the import check's child to say (``ahgd config check``, a daemon's load):
    importing a module here could hang the caller.  Other entries are the model's to check."""
    stages = data.get("stages") if isinstance(data, dict) else None
    out = []
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        for key in ("retry_on", "no_retry_on"):
            names = stage.get(key) if isinstance(stage, dict) else None
            for j, name in enumerate(names if isinstance(names, list) else []):
                if isinstance(name, str) and "." in name \
                        and name_problem(name, key=key, import_modules=False) is None:
                    out.append((("stages", i, key, j), key, name))
    return out


def same_class_in_both(retry_on: Iterable[str], no_retry_on: Iterable[str]) -> str | None:
    """The problem of a class named in both lists, or None."""
    both = sorted(set(retry_on) & set(no_retry_on))
    if both:
        return (f"{', '.join(both)} {'is' if len(both) == 1 else 'are'} in both retry_on and "
                "no_retry_on; keep each class in one of them")
    return None


def _is_exception(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


@lru_cache(maxsize=256)
def _resolved(name: str) -> type | None:
    """The class a checked name stands for (None if it cannot be found here: no match)."""
    module, _, attr = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module) if module else builtins, attr, None)
    except Exception:  # checked when the stage was configured; here it simply matches nothing
        return None
    return found if _is_exception(found) else None
