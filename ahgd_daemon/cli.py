"""``ahgd``: the command line.  Errors become exit codes and messages here, nowhere below.

This module is the ``ahgd`` group (the console script's entry point,
``ahgd_daemon.cli:main``) and its table of commands, which live by topic in
``cli_daemon`` (daemon, demo), ``cli_history``, ``cli_runs``, ``cli_status``,
``cli_state``, ``cli_config``, ``cli_warehouse``, ``cli_logs`` (logs, runs show),
``cli_pipelines`` (pause, resume, pipelines, backfill), ``cli_quarantine``
(quarantine list, release, purge), ``cli_export`` (export) and ``cli_gc`` (gc).
A command's module is imported only when that command runs or shows its help,
so ``ahgd --help`` imports click and this module only.

Exit codes: 0 success; 1 the thing asked for failed (a run failed, a check
found differences, an error with a message); 2 the command line was wrong.
"""

from __future__ import annotations

from typing import Any

import click

#: name -> (module in this package, the command's name there, the first sentence of its
#: help).  A command's module is imported only when that command runs or its help is
#: shown: ``ahgd --help`` lists them from this table (tests/daemon/test_footprint.py checks
#: it against the commands).
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "backfill": ("cli_pipelines", "backfill",
        "One run per tick of a pipeline's schedule from --from to --to, with the tick's"
        ' time as fire_time; ticks that ran already are left alone (a second backfill '
        'is a no-op).'),
    "cancel": ("cli_runs", "cancel",
        'Cancel a pending, parked or running run, or every run of a backfill not yet '
        "ended (RUN_ID: the backfill's id, backfill-...)."),
    "config": ("cli_config", "config_group",
        'Check configuration files, or print their JSON Schema.'),
    "daemon": ("cli_daemon", "daemon",
        'Run the daemon: drop folders, schedules, recovery; under systemd use Type=notify.'),
    "demo": ("cli_daemon", "demo",
        'Run the daemon once on the bundled pipelines and real AHGD sample data.'),
    "events": ("cli_history", "events",
        'The raw event log, oldest first.'),
    "export": ("cli_export", "export_cmd",
        'Copy a table to a Parquet or CSV file, streaming (a table larger than memory '
        'exports).'),
    "gc": ("cli_gc", "gc",
        "Remove what the retain: policy lets go: old runs' outputs, old inputs, "
        'duplicates, quarantined files, DuckDB spill files.'),
    "history": ("cli_history", "history",
        'Recent runs, newest first (the run_history view), filtered by pipeline, state,'
        ' trigger and time of request.'),
    "logs": ("cli_logs", "logs",
        "The log lines of one run: its stages' context.log, ahgd's own lines, what its "
        'stages printed, tracebacks (kept in <state dir>/logs/RUN_ID.jsonl), and its '
        'events.'),
    "metrics": ("cli_status", "metrics",
        "The daemon's metrics (Prometheus text by default); from history if none runs."),
    "pause": ("cli_pipelines", "pause",
        'Pause a pipeline: files that arrive are taken and their runs wait, schedule '
        'ticks are recorded skipped, nothing of it starts until `ahgd resume` (running '
        'runs finish).'),
    "pipelines": ("cli_pipelines", "pipelines_cmd",
        'The configured pipelines: triggers, state (active, paused, disabled), last '
        'run, next scheduled tick.'),
    "quarantine": ("cli_quarantine", "quarantine_group",
        'Files set aside instead of run: list them, put them back, or remove old ones.'),
    "resume": ("cli_pipelines", "resume",
        'Resume a paused pipeline: its waiting runs start, and the ticks skipped while '
        "it was paused run as each schedule's misfire policy says (skip: none, latest, "
        'all).'),
    "retry": ("cli_runs", "retry",
        'Run a FAILED, PARKED or CANCELLED run again from its first unfinished stage; '
        'also a RUNNING one whose owner is gone (its process was killed).'),
    "run": ("cli_runs", "run_cmd",
        'Run a pipeline now (through the daemon if one runs on this state directory).'),
    "runs": ("cli_logs", "runs",
        'One run in detail (`ahgd runs show RUN_ID`).'),
    "state": ("cli_state", "state_group",
        'Maintain the history database (rebuild projections, check integrity).'),
    "status": ("cli_status", "status",
        'Active runs with progress, the last runs, open alerts and system figures.'),
    "warehouse": ("cli_warehouse", "warehouse_group",
        'The warehouse the loaders write (<state dir>/warehouse.duckdb).'),
}


class AhgdGroup(click.Group):
    """Loads a command's module on first use (:data:`LAZY_COMMANDS`), and turns the
    project's errors into one readable line and exit code 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            import importlib

            module, attr, _ = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(f".{module}", __package__), attr),
                             cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str],
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:  # "did you mean" among all, loaded or not
            raise click.exceptions.NoSuchCommand(exc.command_name,
                                                 possibilities=self.list_commands(ctx),
                                                 ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands and their short help, without importing the modules not loaded yet
        (a stand-in carries the first sentence of each one's help)."""
        listed = {name: self.commands.get(name) or click.Command(name, help=LAZY_COMMANDS[name][2])
                  for name in self.list_commands(ctx)}
        shown = [(name, cmd) for name, cmd in listed.items() if not cmd.hidden]
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _ in shown)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in shown])

    def invoke(self, ctx: click.Context) -> Any:
        from state.errors import AhgdError

        try:
            return super().invoke(ctx)
        except AhgdError as exc:
            from .cli_common import fail

            fail(str(exc))


@click.group(cls=AhgdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ahgd-daemon")
def main() -> None:
    """ahgd: event-sourced ETL daemon for Australian health and geographic data.

    Every run and stage transition is appended to <state dir>/history.db;
    query it with `ahgd history`, `ahgd events` or plain SQL (sqlite3).
    """
    from pipelines.execution.children import working_directory_last
    from state.statedir import restrict_umask

    restrict_umask()  # what any command writes is for its owner and group only
    working_directory_last()  # stage modules kept there import, as in the worker processes


if __name__ == "__main__":  # pragma: no cover
    main()
