"""``ahgd``: the command line.  Errors become exit codes and messages here, nowhere below.

Exit codes: 0 success; 1 the thing asked for failed (a run failed, a check
found differences, an error with a message); 2 the command line was wrong.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from state.errors import AhgdError

from state.machine import ENDED_RUN_STATES
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



# --------------------------------------------------------------------------- config


@main.group("config")
def config_group() -> None:
    """Check configuration files, or print their JSON Schema."""


@config_group.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--no-import", is_flag=True, help="Do not import stage classes.")
@state_dir_option
def config_check(state_dir: Path, files: tuple[str, ...], no_import: bool) -> None:
    """Validate pipeline and master files; list every error, exit 1 if any."""
    from pipelines.config import check_files

    problems = check_files(list(files), state_dir=state_dir, import_classes=not no_import)
    for line in problems:
        click.echo(line, err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(files)} file(s) valid")


@config_group.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON Schema of pipeline and master files (for editors)."""
    from pipelines.config import config_schema

    click.echo(json.dumps(config_schema(), indent=2))


# --------------------------------------------------------------------------- daemon


def config_option(required: bool = True) -> Callable[..., Any]:
    return click.option("--config", "-c", "configs", multiple=True, required=required,
                        type=click.Path(exists=True, dir_okay=False),
                        help="A master file or pipeline file (repeatable).")


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


# --------------------------------------------------------------------------- runs


def _ask_daemon(state_dir: Path, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """The daemon's reply; None only when no daemon runs on this state directory.

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
            reply = request(state_dir, payload, timeout=timeout)
        except ControlError as exc:
            fail(str(exc))
        if reply is not None or not is_locked(state_dir / LOCK_NAME):
            return reply
        if time.monotonic() > deadline:
            fail(f"a daemon holds {state_dir / LOCK_NAME} but does not answer on "
                 f"{socket_path(state_dir)}; if it is still starting, try again in a moment")
        time.sleep(0.2)


def _local_pipelines(state_dir: Path, configs: tuple[str, ...]) -> dict[str, Any]:
    if not configs:
        fail("no daemon is running on this state directory, so --config is needed to run "
             "pipelines here (or start the daemon: ahgd daemon --config FILE)")
    from pipelines.config import load_config
    from pipelines.config.configured import build_pipelines

    loaded = load_config([Path(c) for c in configs], state_dir=state_dir, import_classes=True)
    return build_pipelines(loaded, state_dir=state_dir)


def _wait_for(state_dir: Path, run_id: str, timeout: float | None) -> int:
    from state import EventLog

    deadline = None if timeout is None else time.monotonic() + timeout
    with EventLog.open(state_dir) as log:
        while True:
            run = log.run(run_id)
            if run is not None and run.state in ENDED_RUN_STATES:
                _print_outcome(run)
                return 0 if run.state == "COMPLETED" else 1
            if deadline is not None and time.monotonic() > deadline:
                click.echo(f"run {run_id} is still {run.state if run else 'unknown'}; "
                           "see `ahgd history`")
                return 1
            time.sleep(0.2)


def _print_outcome(run: Any) -> None:
    click.echo(f"run {run.run_id} ({run.pipeline}): {run.state}")
    if run.error:
        click.echo(f"  error: {run.error}")


@main.command("run")
@click.argument("pipeline")
@config_option(required=False)
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False),
              help="The input file (copied into the state directory's store).")
@click.option("--resume-from", default=None, help="Reuse the recorded outputs of earlier stages.")
@click.option("--no-wait", is_flag=True, help="With a daemon: print the run id and return.")
@click.option("--inprocess", is_flag=True, help="Without a daemon: run stages on threads.")
@state_dir_option
def run_cmd(state_dir: Path, pipeline: str, configs: tuple[str, ...], input_file: str | None,
            resume_from: str | None, no_wait: bool, inprocess: bool) -> None:
    """Run a pipeline now (through the daemon if one runs on this state directory)."""
    # the daemon copies and hashes --input while it answers: give big files time
    reply = _ask_daemon(state_dir, {"cmd": "run", "pipeline": pipeline, "input": input_file and
                                    str(Path(input_file).resolve()), "resume_from": resume_from},
                        timeout=600)
    if reply is not None:
        click.echo(f"requested run {reply['run_id']} from the daemon")
        if not no_wait:
            sys.exit(_wait_for(state_dir, reply["run_id"], None))
        return
    from pipelines.base import new_run_id
    from state import EventLog
    from state.locks import FileLock, run_lock_path

    from . import logs
    from .requests import request_run

    logs.configure(level="warning")
    pipelines = _local_pipelines(state_dir, configs)
    if pipeline not in pipelines:
        fail(f"no pipeline {pipeline!r} in the configuration (known: {', '.join(sorted(pipelines))})")
    run_id = new_run_id(pipeline)
    # hold the run's lock before it exists, so a daemon starting now leaves it to us
    lock = FileLock(run_lock_path(state_dir, run_id), {"role": "ahgd run", "run_id": run_id},
                    remove_on_release=True).acquire()
    with EventLog.open(state_dir) as log:
        request_run(log, state_dir, pipelines, pipeline, input_file=input_file,
                    resume_from=resume_from, run_id=run_id)
        p = pipelines[pipeline]
        if inprocess:
            p._executor_arg = "inprocess"
        click.echo(f"running {run_id} here (no daemon on {state_dir}); Ctrl-C cancels it")
        ctx = _execute_here(p, run_id, log, lock)
        run = log.run(run_id)
    _print_outcome(run)
    sys.exit(0 if ctx.state == "COMPLETED" else 1)


def _execute_here(pipeline: Any, run_id: str, log: Any, lock: Any = None) -> Any:
    """Run in this process; the first Ctrl-C cancels the run cleanly, a second one aborts."""
    import signal

    from pipelines.execution.engine import CancelToken

    token = CancelToken()

    def on_sigint(signum: int, frame: Any) -> None:
        if token.is_set():
            raise KeyboardInterrupt
        click.echo("\ncancelling (stages are interrupted and recorded; Ctrl-C again to abort)",
                   err=True)
        token.set("cancelled with Ctrl-C")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return pipeline.execute_run(run_id, log=log, cancel=token, run_lock=lock)
    finally:
        signal.signal(signal.SIGINT, previous)


@main.command()
@click.argument("run_id")
@config_option(required=False)
@click.option("--no-wait", is_flag=True, help="With a daemon: return once it is queued.")
@state_dir_option
def retry(state_dir: Path, run_id: str, configs: tuple[str, ...], no_wait: bool) -> None:
    """Run a FAILED, PARKED or CANCELLED run again from its first unfinished stage."""
    reply = _ask_daemon(state_dir, {"cmd": "retry", "run_id": run_id})
    if reply is not None:
        click.echo(f"run {run_id} ({reply['pipeline']}) is queued again in the daemon "
                   f"(it was {reply['previous_state']})")
        if not no_wait:
            sys.exit(_wait_for(state_dir, run_id, None))
        return
    from state import EventLog
    from state.locks import FileLock, run_lock_path

    from .requests import retry as retry_run

    pipelines = _local_pipelines(state_dir, configs)  # before anything is recorded
    with EventLog.open(state_dir) as log:
        before = log.run(run_id)
        if before is not None and before.pipeline not in pipelines:
            fail(f"pipeline {before.pipeline!r} of run {run_id} is not in the configuration given")
        lock = FileLock(run_lock_path(state_dir, run_id), {"role": "ahgd retry", "run_id": run_id},
                        remove_on_release=True).acquire()
        out = retry_run(log, run_id)
        click.echo(f"retrying {run_id} here (it was {out['previous_state']}); Ctrl-C cancels it")
        _execute_here(pipelines[out["pipeline"]], run_id, log, lock)
        run = log.run(run_id)
    _print_outcome(run)
    sys.exit(0 if run.state == "COMPLETED" else 1)


@main.command()
@click.argument("run_id")
@state_dir_option
def cancel(state_dir: Path, run_id: str) -> None:
    """Cancel a pending, parked or running run."""
    reply = _ask_daemon(state_dir, {"cmd": "cancel", "run_id": run_id})
    if reply is None:
        from state import EventLog

        from .requests import cancel_recorded

        with EventLog.open(state_dir) as log:
            reply = cancel_recorded(log, state_dir, run_id)
    if reply.get("cancelling"):
        click.echo(f"run {run_id} is being cancelled by the daemon")
    else:
        click.echo(f"run {run_id} cancelled (it was {reply['previous_state']})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The dashboard document, for scripts.")
@click.option("--recent", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Last runs shown per pipeline.")
@state_dir_option
def status(state_dir: Path, as_json: bool, recent: int) -> None:
    """Active runs with progress, the last runs, open alerts and system figures."""
    reply = _ask_daemon(state_dir, {"cmd": "dashboard", "recent": recent})
    if reply is not None:
        doc = reply["dashboard"]
    else:
        doc = _history_dashboard(state_dir, recent)
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    from rich.console import Console

    from .statusview import render_status

    render_status(doc, console=Console(), recent=recent, state_dir=str(state_dir))


def _history_dashboard(state_dir: Path, recent: int) -> dict[str, Any]:
    """No daemon runs here: the same document, from the event log alone (read only)."""
    from state import HISTORY_DB

    if not (state_dir / HISTORY_DB).exists():  # nothing has run here: an empty document
        from pipelines.monitoring import PipelineMonitor

        return PipelineMonitor(state_dir / "metrics", enable_system_monitoring=False,
                               read_only=True).get_dashboard_data(recent=recent)
    with _read_only_monitor(state_dir) as monitor:
        return monitor.get_dashboard_data(recent=recent)


@contextlib.contextmanager
def _read_only_monitor(state_dir: Path) -> Iterator[Any]:
    """A monitor seeded from the history through a read-only connection: writes nothing."""
    from pipelines.monitoring import PipelineMonitor
    from state import HISTORY_DB
    from state.db import ReadOnlyHistory

    with ReadOnlyHistory(state_dir / HISTORY_DB) as history:
        yield PipelineMonitor(state_dir / "metrics", enable_system_monitoring=False,
                              event_log=history, read_only=True)


@main.command()
@click.option("--format", "fmt", default="prometheus", show_default=True,
              type=click.Choice(["prometheus", "json", "csv"]))
@state_dir_option
def metrics(state_dir: Path, fmt: str) -> None:
    """The daemon's metrics (Prometheus text by default); from history if none runs."""
    reply = _ask_daemon(state_dir, {"cmd": "metrics", "format": fmt})
    if reply is not None:
        click.echo(reply["metrics"], nl=False)
        return
    from state import HISTORY_DB

    if not (state_dir / HISTORY_DB).exists():
        fail(f"no daemon running on {state_dir} and no history there ({state_dir / HISTORY_DB} "
             "does not exist); check --state-dir")
    with _read_only_monitor(state_dir) as monitor:
        click.echo(monitor.export_metrics(format=fmt), nl=False)



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
