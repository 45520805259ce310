"""``ahgd daemon`` and ``ahgd demo``: the daemon in the foreground (or its plan, ``--dry-run``),
and the demo on the bundled pipelines."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .cli_common import config_option, fail, history_answer, state_dir_option


@click.command()
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
@click.option("--dry-run", is_flag=True,
              help="Print what the daemon would do now (files it would take or leave and why, "
                   "ticks due, runs waiting), change nothing, and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@state_dir_option
def daemon(state_dir: Path, configs: tuple[str, ...], once: bool, max_workers: int | None,
           log_level: str, json_logs: bool | None, http: str | None, http_allow_remote: bool,
           http_token_file: str | None, dry_run: bool, as_json: bool) -> None:
    """Run the daemon: drop folders, schedules, recovery; under systemd use Type=notify."""
    if dry_run:
        _dry_run(state_dir, configs, as_json)
        return
    if as_json:
        fail("--json goes with --dry-run (the daemon's own log lines: --json-logs)", code=2)
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


def _dry_run(state_dir: Path, configs: tuple[str, ...], as_json: bool) -> None:
    """``ahgd daemon --dry-run``: the plan of :mod:`ahgd_daemon.dryrun`; writes nothing."""
    import json

    from state import utc_now

    from .configuration import load_setup
    from .dryrun import plan, render

    setup = load_setup([Path(c) for c in configs], state_dir)
    doc = history_answer(state_dir, lambda history: plan(setup, history, utc_now()))
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    for line in render(doc):
        click.echo(line)


@click.command()
@click.option("--state-dir", "state_dir_opt", default="ahgd-demo-state", show_default=True,
              metavar="DIR", help="Where the demo keeps its history, inboxes and warehouse.")
@click.option("--config", "config", default=None, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A master file listing the bundled pipelines (default: theirs), e.g. with "
                   "daemon.executor set to run them on a Dask cluster.")
def demo(state_dir_opt: str, config: Path | None) -> None:
    """Run the daemon once on the bundled pipelines and real AHGD sample data."""
    from state.statedir import resolve_state_dir

    from .demo import MASTER, run_demo

    sys.exit(run_demo(resolve_state_dir(state_dir_opt, {}), master=config or MASTER))


COMMANDS = [daemon, demo]
