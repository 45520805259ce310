"""What every ``ahgd`` command shares: ``--state-dir``, ``--config``, failing with a message
(a damaged history.db with the same report from every command), opening the history, and
asking the daemon that runs on a state directory (input files passed open)."""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from state.errors import DatabaseDamaged
from state.statedir import DEFAULT, ENV_VAR, resolve_state_dir


def state_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--state-dir`` on every command, resolved (option, $AHGD_STATE_DIR, ./ahgd-state; a
    ./state of an earlier version with a note)."""

    @click.option(
        "--state-dir",
        "state_dir",
        default=None,
        metavar="DIR",
        help=f"State directory (default: ${ENV_VAR}, else ./{DEFAULT}).",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, state_dir: str | None, **kwargs: Any) -> Any:
        resolved = resolve_state_dir(state_dir, os.environ,
                                     note=lambda text: click.echo(f"note: {text}", err=True))
        try:
            return fn(*args, state_dir=resolved, **kwargs)
        except (DatabaseDamaged, sqlite3.DatabaseError) as exc:
            _fail_if_history_damaged(resolved, exc)
            raise

    return wrapper


def _fail_if_history_damaged(state_dir: Path, exc: Exception) -> None:
    """A damaged history.db is one report, the same from every command: what is left, what to do."""
    from state import HISTORY_DB
    from state.damage import damaged, report

    db = state_dir / HISTORY_DB
    if isinstance(exc, DatabaseDamaged):
        if exc.path.resolve() == db.resolve():
            fail(report(db, exc.sqlite_error))
    elif any(w in str(exc).lower() for w in ("malformed", "not a database", "corrupt")) \
            and damaged(db):  # a raw sqlite3 error from a read that met the damage
        fail(report(db, str(exc)))


def config_option(required: bool = True) -> Callable[..., Any]:
    return click.option("--config", "-c", "configs", multiple=True, required=required,
                        type=click.Path(exists=True, dir_okay=False),
                        help="A master file or pipeline file (repeatable).")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def require_history(state_dir: Path) -> Path:
    """``<state dir>/history.db``; fail, saying so, when there is none (a wrong --state-dir
    must not look like an empty history)."""
    from state import HISTORY_DB

    db = state_dir / HISTORY_DB
    if not db.exists():
        fail(f"no history at {db}: nothing has run with this state directory yet "
             f"(pass --state-dir or set {ENV_VAR} to the directory the daemon uses)")
    return db


def history_answer(state_dir: Path, question: Callable[[Any], Any]) -> Any:
    """``question(history)`` asked of ``<state dir>/history.db`` read-only, or of None when
    nothing has run there yet (for commands that also work from the configuration alone)."""
    from state import HISTORY_DB
    from state.db import ReadOnlyHistory

    db = state_dir / HISTORY_DB
    if not db.exists():
        return question(None)
    with ReadOnlyHistory(db) as history:
        return question(history)


def open_log(state_dir: Path, *, must_exist: bool = True):
    """The event log of ``state_dir``; one that does not exist is refused unless not
    ``must_exist`` (then it is created: only what starts runs may do that)."""
    from state import HISTORY_DB, EventLog

    return EventLog(require_history(state_dir) if must_exist else state_dir / HISTORY_DB)


def check_name(message: str | None) -> None:
    """Fail with ``message`` (from :mod:`ahgd_daemon.names`) unless it is None."""
    if message:
        fail(message)


def ask_daemon(state_dir: Path, payload: dict[str, Any], timeout: float = 30.0,
               fds: Sequence[int] = ()) -> dict[str, Any] | None:
    """The daemon's reply; None only when no daemon runs on this state directory.

    ``fds`` (open files: ``run --input``) travel beside the request, so the
    daemon reads them with the rights of the user who opened them.

    A daemon that holds the state lock but is not listening yet (still
    recovering at start-up) is waited for: running the request here instead
    would make two writers of one run.
    """
    from state.locks import is_locked

    from .control import ControlError, request, socket_path
    from .daemon import LOCK_NAME

    deadline = time.monotonic() + 60
    while True:
        try:
            reply = request(state_dir, payload, timeout=timeout, fds=fds)
        except ControlError as exc:
            fail(str(exc))
        if reply is not None or not is_locked(state_dir / LOCK_NAME):
            return reply
        if time.monotonic() > deadline:
            fail(f"a daemon holds {state_dir / LOCK_NAME} but does not answer on "
                 f"{socket_path(state_dir)}; if it is still starting, try again in a moment")
        time.sleep(0.2)
