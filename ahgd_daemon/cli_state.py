"""``ahgd state check|rebuild``: verify the history database, or re-fold its projections."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .cli_common import open_log, state_dir_option


@click.group("state")
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
    then makes the projections agree with the events again.  A history.db
    SQLite cannot read is reported with what can be salvaged and how.  Files
    every user of the machine may read, RUNNING runs whose process is gone,
    and removals by retention a crash cut short are listed as warnings (they
    do not change the exit code).
    """
    with open_log(state_dir) as log:
        report = log.check()
        _warn_owners_gone(log, state_dir)
    _warn_world_accessible(state_dir)
    _warn_trash(state_dir)
    if report.integrity != ["ok"]:
        from state.damage import report as damage_report

        click.echo("integrity check FAILED:", err=True)
        for line in report.integrity:
            click.echo(f"  {line}", err=True)
        click.echo(damage_report(log.path, report.integrity[0]), err=True)
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


def _warn_owners_gone(log: object, state_dir: Path) -> None:
    """RUNNING runs nobody runs (a killed script): a warning, the exit code is unaffected."""
    from state.orphans import daemon_serves, owners_gone

    gone = owners_gone(log, state_dir)
    if not gone:
        return
    click.echo(f"warning: {len(gone)} run(s) are RUNNING in the log but nobody runs them (the "
               "process was killed, or the machine went down):", err=True)
    for owner in gone.values():
        click.echo(f"  {owner.run_id} ({owner.pipeline}): {owner.describe()}", err=True)
    click.echo("the daemon on this state directory recovers them within 30 s" if daemon_serves(
        state_dir) else "fix: `ahgd retry RUN_ID` resumes one at its first unfinished stage "
        "(the next run of its pipeline from a script closes it as FAILED)", err=True)


def _warn_trash(state_dir: Path) -> None:
    """Removals a crash cut short (retention): finished by the next collection."""
    from .removal import TRASH, trash_waiting

    count = trash_waiting(state_dir)
    if count:
        click.echo(f"warning: {count} removal(s) by retention were cut short (files wait in "
                   f"{state_dir / TRASH}); the next collection finishes them: deleted if the "
                   "log recorded the removal, put back if it did not (the daemon does it at "
                   "start-up; or run `ahgd gc`)", err=True)


def _warn_world_accessible(state_dir: Path) -> None:
    from state.statedir import world_accessible

    count, paths = world_accessible(state_dir)
    if not count:
        return
    click.echo(f"warning: {count:,} files and folders in {state_dir} are open to every user of "
               "this machine (made before ahgd kept its files to their owner and group, or "
               "by hand):", err=True)
    for path in paths:
        click.echo(f"  {path}", err=True)
    if count > len(paths):
        click.echo(f"  … and {count - len(paths):,} more", err=True)
    click.echo(f"fix: chmod -R o-rwx {state_dir}   (unless other users are meant to read or drop "
               "files there)", err=True)


COMMANDS = [state_group]
