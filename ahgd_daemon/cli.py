"""``ahgd``: the command line.  Errors become exit codes and messages here, nowhere below.

Exit codes: 0 success; 1 the thing asked for failed (a run failed, a check
found differences, an error with a message); 2 the command line was wrong.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from state.errors import AhgdError

from state.statedir import ENV_VAR, resolve_state_dir


def state_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--state-dir`` on every command, resolved (option, $AHGD_STATE_DIR, ./state)."""

    @click.option(
        "--state-dir",
        "state_dir",
        default=None,
        metavar="DIR",
        help=f"State directory (default: ${ENV_VAR}, else ./state).",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, state_dir: str | None, **kwargs: Any) -> Any:
        return fn(*args, state_dir=resolve_state_dir(state_dir, os.environ), **kwargs)

    return wrapper


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class AhgdGroup(click.Group):
    """Turns the project's errors into one readable line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AhgdError as exc:
            fail(str(exc))


@click.group(cls=AhgdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ahgd-daemon")
def main() -> None:
    """ahgd: event-sourced ETL daemon for Australian health and geographic data.

    Every run and stage transition is appended to <state dir>/history.db;
    query it with `ahgd history`, `ahgd events` or plain SQL (sqlite3).
    """


def open_log(state_dir: Path, *, must_exist: bool = True):
    from state import HISTORY_DB, EventLog

    db = state_dir / HISTORY_DB
    if must_exist and not db.exists():
        fail(f"no history at {db}: nothing has run with this state directory yet "
             f"(pass --state-dir or set {ENV_VAR} to the directory the daemon uses)")
    return EventLog(db)


# --------------------------------------------------------------------------- history


@main.command()
@click.option("--pipeline", "-p", default=None, help="Only runs of this pipeline.")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of run_history rows.")
@state_dir_option
def history(state_dir: Path, pipeline: str | None, limit: int, as_json: bool) -> None:
    """Recent runs, newest first (the run_history view)."""
    with open_log(state_dir) as log:
        where, params = "", []
        if pipeline:
            where, params = "WHERE pipeline = ?", [pipeline]
        rows = log.query(
            f"SELECT * FROM run_history {where} ORDER BY requested_at DESC, run_id DESC LIMIT ?",
            [*params, limit],
        )
    records = [dict(r) for r in rows]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no runs yet" + (f" of pipeline {pipeline!r}" if pipeline else ""))
        return
    click.echo(render_table(records, ["run_id", "pipeline", "trigger", "state", "started_at",
                                      "duration_s", "error"]))


def render_table(records: list[dict], columns: list[str], max_width: int = 60) -> str:
    def cell(v: Any) -> str:
        s = "" if v is None else str(v)
        s = s.replace("\n", " ")
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    cells = [[cell(r.get(c)) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


# --------------------------------------------------------------------------- events


@main.command()
@click.option("--run", "run_id", default=None, help="Only events of this run.")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable).")
@click.option("--after", default=0, show_default=True, help="Only events with seq greater than this.")
@click.option("--limit", "-n", default=None, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of events.")
@state_dir_option
def events(state_dir: Path, run_id: str | None, types: tuple[str, ...], after: int,
           limit: int | None, as_json: bool) -> None:
    """The raw event log, oldest first."""
    with open_log(state_dir) as log:
        evs = log.events(run_id=run_id, types=types or None, after=after, limit=limit)
    records = [
        {"seq": e.seq, "ts": e.ts, "type": e.type, "run_id": e.run_id, "stage": e.stage,
         "attempt": e.attempt, "payload": e.payload, "idempotency_key": e.idempotency_key}
        for e in evs
    ]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for r in records:
        where = " ".join(x for x in (r["run_id"], r["stage"] and f"{r['stage']}#{r['attempt']}") if x)
        payload = json.dumps(r["payload"], sort_keys=True) if r["payload"] else ""
        click.echo(f"{r['seq']:>6}  {r['ts']}  {r['type']:<22} {where}  {payload}".rstrip())


# --------------------------------------------------------------------------- state


@main.group("state")
def state_group() -> None:
    """Maintain the history database (rebuild projections, check integrity)."""


@state_group.command("rebuild")
@state_dir_option
def state_rebuild(state_dir: Path) -> None:
    """Drop the projections (runs, stage_runs, ...) and re-fold them from the events."""
    with open_log(state_dir) as log:
        t0 = time.perf_counter()
        count = log.rebuild()
    click.echo(f"rebuilt projections from {count:,} events in {time.perf_counter() - t0:.2f} s")


@state_group.command("check")
@state_dir_option
def state_check(state_dir: Path) -> None:
    """SQLite integrity check, and the projections compared with a fresh fold.

    Exit 1, listing the differences, when they disagree; `ahgd state rebuild`
    then makes the projections agree with the events again.
    """
    with open_log(state_dir) as log:
        report = log.check()
    if report.integrity != ["ok"]:
        click.echo("integrity check FAILED:", err=True)
        for line in report.integrity:
            click.echo(f"  {line}", err=True)
    if report.differences:
        click.echo(f"projections differ from the events ({len(report.differences)} differences):",
                   err=True)
        for line in report.differences[:200]:
            click.echo(f"  {line}", err=True)
        if len(report.differences) > 200:
            click.echo(f"  … and {len(report.differences) - 200} more", err=True)
        click.echo("fix: `ahgd state rebuild` re-folds the projections from the events", err=True)
    if not report.ok:
        sys.exit(1)
    click.echo(f"ok: integrity ok; projections match a fresh fold of {report.events:,} events")


if __name__ == "__main__":  # pragma: no cover
    main()
