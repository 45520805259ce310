"""``ahgd``: the command line.  Errors become exit codes and messages here, nowhere below.

This module is the ``ahgd`` group (the console script's entry point,
``ahgd_daemon.cli:main``), the ``daemon`` and ``demo`` commands, and the
registration of the other commands, which live by topic in ``cli_history``,
``cli_runs``, ``cli_status``, ``cli_state`` and ``cli_config``.

Exit codes: 0 success; 1 the thing asked for failed (a run failed, a check
found differences, an error with a message); 2 the command line was wrong.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from state.errors import AhgdError

from . import cli_config, cli_history, cli_runs, cli_state, cli_status, cli_warehouse
from .cli_common import config_option, fail, state_dir_option


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
    from pipelines.execution.children import working_directory_last
    from state.statedir import restrict_umask

    restrict_umask()  # what any command writes is for its owner and group only
    working_directory_last()  # stage modules kept there import, as in the worker processes


for _module in (cli_history, cli_state, cli_config, cli_runs, cli_status, cli_warehouse):
    for _command in _module.COMMANDS:
        main.add_command(_command)


@main.command()
@config_option()
@click.option("--once", is_flag=True,
              help="Process what is due (waiting files, missed ticks, runs to recover), wait for "
                   "those runs, exit 0 if all succeeded and 1 otherwise.")
@click.option("--max-workers", type=click.IntRange(min=1), default=None,
              help="Stages at once across all runs (default: the config's daemon.max_workers).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--json-logs/--pretty-logs", default=None,
              help="Force JSON lines or pretty output (default: pretty on a terminal).")
@click.option("--http", "http", metavar="HOST:PORT", default=None,
              help="Serve the read-only status page, /metrics and /api on this address "
                   "(loopback only, e.g. 127.0.0.1:8787; port 0 picks one). Default: "
                   "daemon.status_listen, else off.")
@click.option("--http-allow-remote", is_flag=True,
              help="Allow a non-loopback --http address; needs a token.")
@click.option("--http-token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the token every HTTP request must carry (Authorization: "
                   "Bearer TOKEN, or ?token=TOKEN). Default: $AHGD_HTTP_TOKEN.")
@state_dir_option
def daemon(state_dir: Path, configs: tuple[str, ...], once: bool, max_workers: int | None,
           log_level: str, json_logs: bool | None, http: str | None, http_allow_remote: bool,
           http_token_file: str | None) -> None:
    """Run the daemon: drop folders, schedules, recovery; under systemd use Type=notify."""
    from . import logs
    from .daemon import Daemon, DaemonOptions
    from .httpstatus import read_token
    from .notify import Notifier

    token = read_token(http_token_file) if http_token_file else (
        os.environ.get("AHGD_HTTP_TOKEN") or None)
    logs.configure(json_lines=json_logs, level=log_level)
    notifier = Notifier.from_environ(unset_environment=True)
    json_lines = json_logs if json_logs is not None else not sys.stdout.isatty()
    code = Daemon(DaemonOptions(config_paths=[Path(c) for c in configs], state_dir=state_dir,
                                once=once, max_workers=max_workers, notifier=notifier,
                                json_logs=json_lines, http=http,
                                http_allow_remote=http_allow_remote, http_token=token)).run()
    sys.exit(code)


@main.command()
@click.option("--state-dir", "state_dir_opt", default="ahgd-demo-state", show_default=True,
              metavar="DIR", help="Where the demo keeps its history, inboxes and warehouse.")
def demo(state_dir_opt: str) -> None:
    """Run the daemon once on the bundled pipelines and real AHGD sample data."""
    from state.statedir import resolve_state_dir

    from .demo import run_demo

    sys.exit(run_demo(resolve_state_dir(state_dir_opt, {})))


if __name__ == "__main__":  # pragma: no cover
    main()
