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


COMMANDS = [state_group]
