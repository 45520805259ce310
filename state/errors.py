"""The project's exceptions: one base, subclasses named after the condition.

Messages name the thing, the value and the fix; the CLI and the daemon turn
them into exit codes and log lines, nothing below them does.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path


class AhgdError(Exception):
    """Base of every error this project raises on purpose."""


class IllegalTransition(AhgdError):
    """An event that the state machine does not allow from the current state.

    Raised before anything is written: the event log is left unchanged.
    """

    def __init__(self, message: str, *, event_type: str, current: str | None):
        super().__init__(message)
        self.event_type = event_type
        self.current = current


class EventLogError(AhgdError):
    """The event log database could not be read or written."""


class DiskFull(EventLogError):
    """The disk holding the state directory is full; nothing was written."""


class DatabaseDamaged(EventLogError):
    """SQLite cannot read the database file (not a database, malformed); ``path`` names it."""

    def __init__(self, message: str, *, path: str | os.PathLike[str], sqlite_error: str):
        super().__init__(message)
        self.path = Path(path)
        self.sqlite_error = sqlite_error


class SchemaTooNew(EventLogError):
    """The history database was written by a newer ahgd than this one."""


class MigrationFailed(EventLogError):
    """A schema migration step failed; the database stays at its old version."""


class StateDirError(AhgdError):
    """The state directory is unusable (missing permissions, wrong place, locked)."""


class StoreError(AhgdError):
    """A stage output could not be stored or read back."""


class OutputMissing(StoreError):
    """A recorded stage output is gone from disk or fails its checksum."""


class ObjectStoreError(StoreError):
    """The object store holding stage outputs is not configured, not installed or not reachable.

    ``setting``: ``"bucket"`` or ``"credentials"`` when one of its settings is wrong (the
    bucket does not exist, the credentials are missing or refused): waiting for the store
    does not help, fixing the setting does.  None: the store may be down, or unreachable."""

    def __init__(self, message: str, *, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


def did_you_mean(word: str, choices: Iterable[str], *, cutoff: float = 0.6,
                 prefix: str = "") -> str:
    """``"did you mean 'x'?"`` for the choice closest to ``word``, or ``""`` if none is close;
    shown after ``prefix`` (``pkg.``: the last names of dotted ones compared, then shown whole).

    The one spelling-hint helper of the project: every "unknown ..." message
    that can suggest a name uses it, and adds its own punctuation around it.
    """
    close = difflib.get_close_matches(str(word), sorted({str(c) for c in choices}), n=1,
                                      cutoff=cutoff)
    return f"did you mean {prefix + close[0]!r}?" if close else ""
