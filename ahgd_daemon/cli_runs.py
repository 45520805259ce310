"""``ahgd run``, ``ahgd retry`` and ``ahgd cancel``: through the daemon if one runs, else here.

With a daemon on the state directory the request goes over its control
socket and the daemon does the work (so there are never two writers of one
run); without one, ``run`` and ``retry`` execute the run in this process
(``--config`` needed) and ``cancel`` records the cancellation itself.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from state.machine import ENDED_RUN_STATES, RunState

from .cli_common import ask_daemon, check_name, config_option, fail, open_log, state_dir_option


def _local_pipelines(state_dir: Path, configs: tuple[str, ...],
                     ) -> tuple[dict[str, Any], dict[str, Path]]:
    """The pipelines of ``configs`` by name, and the disabled ones (name -> master file)."""
    if not configs:
        fail("no daemon is running on this state directory, so --config is needed to run "
             "pipelines here (or start the daemon: ahgd daemon --config FILE)")
    from pipelines.config import load_config
    from pipelines.config.configured import build_pipelines

    loaded = load_config([Path(c) for c in configs], state_dir=state_dir, import_classes=True)
    disabled = {n: p.master or p.source for n, p in loaded.pipelines.items() if not p.enabled}
    return build_pipelines(loaded, state_dir=state_dir), disabled


def _wait_for(state_dir: Path, run_id: str, timeout: float | None) -> int:
    from state import EventLog

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with EventLog.open(state_dir) as log:
            while True:
                run = log.run(run_id)
                if run is not None and run.state in ENDED_RUN_STATES:
                    _print_outcome(run)
                    return 0 if run.state == RunState.COMPLETED else 1
                if deadline is not None and time.monotonic() > deadline:
                    click.echo(f"run {run_id} is still {run.state if run else 'unknown'}; "
                               "see `ahgd history`")
                    return 1
                time.sleep(0.2)
    except KeyboardInterrupt:  # only the waiting stops: the daemon has the run
        click.echo(f"\nstopped waiting; run {run_id} goes on in the daemon: follow it with "
                   f"`ahgd logs -f {run_id}`, stop it with `ahgd cancel {run_id}`", err=True)
        return 130


def _print_outcome(run: Any) -> None:
    click.echo(f"run {run.run_id} ({run.pipeline}): {run.state}")
    if run.error:
        click.echo(f"  error: {run.error}")


@click.command("run")
@click.argument("pipeline")
@config_option(required=False)
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False),
              help="The input file (copied into the state directory's store).")
@click.option("--resume-from", default=None, help="Reuse the recorded outputs of earlier stages.")
@click.option("--no-wait", is_flag=True, help="With a daemon: print the run id and return.")
@click.option("--inprocess", is_flag=True, help="Without a daemon: run stages on threads.")
@click.option("--force", is_flag=True,
              help="Run it even though the configuration disables it (enabled: false).")
@click.option("--param", "-p", "param_pairs", multiple=True, metavar="KEY=VALUE",
              help="A run parameter, checked against the params: of the pipeline file and "
                   "given to its stages as context.params (repeatable).")
@state_dir_option
def run_cmd(state_dir: Path, pipeline: str, configs: tuple[str, ...], input_file: str | None,
            resume_from: str | None, no_wait: bool, inprocess: bool, force: bool,
            param_pairs: tuple[str, ...]) -> None:
    """Run a pipeline now (through the daemon if one runs on this state directory)."""
    from pipelines.config.params import parse_assignments

    try:
        params = parse_assignments(param_pairs)
    except ValueError as exc:
        fail(str(exc), code=2)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(_open_input(input_file)) if input_file else None
        _run(state_dir, pipeline, configs, source, input_file, resume_from, no_wait, inprocess,
             force, params)


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[int]:
    """The input file, opened here with the rights of the user who runs ``ahgd``."""
    try:  # O_NONBLOCK: a FIFO must not hang the open; it is refused below
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        fail(f"cannot read the input file {path}: {exc.strerror}; give a file you can read")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            fail(f"the input {path} is not a regular file; --input takes a file")
        os.set_blocking(fd, True)
        yield fd
    finally:
        os.close(fd)


def _run(state_dir: Path, pipeline: str, configs: tuple[str, ...], source: int | None,
         input_file: str | None, resume_from: str | None, no_wait: bool, inprocess: bool,
         force: bool, params: dict[str, str]) -> None:
    payload: dict[str, Any] = {"cmd": "run", "pipeline": pipeline, "resume_from": resume_from}
    if params:
        payload["params"] = params
    if force:
        payload["force"] = True
    if source is not None:
        payload["input_name"] = Path(input_file).name
    # the daemon copies and hashes --input while it answers: give big files time
    reply = ask_daemon(state_dir, payload, timeout=600, fds=[source] if source is not None else [])
    if reply is not None:
        click.echo(f"requested run {reply['run_id']} from the daemon")
        if not no_wait:
            sys.exit(_wait_for(state_dir, reply["run_id"], None))
        return
    from pipelines.base import new_run_id
    from state import EventLog
    from state.locks import FileLock, run_lock_path

    from .names import disabled_pipeline, unknown_pipeline
    from .requests import request_run

    _log_runs_here(state_dir)
    pipelines, disabled = _local_pipelines(state_dir, configs)
    if pipeline not in pipelines:
        fail(unknown_pipeline(pipeline, pipelines))
    if pipeline in disabled and not force:  # before the run's lock and the history are made
        fail(disabled_pipeline(pipeline, disabled[pipeline]))
    from .requests import checked_params

    checked_params(pipelines[pipeline], pipeline, params)  # refused before anything is made
    run_id = new_run_id(pipeline)
    # hold the run's lock before it exists, so a daemon starting now leaves it to us
    lock = FileLock(run_lock_path(state_dir, run_id), {"role": "ahgd run", "run_id": run_id},
                    remove_on_release=True).acquire()
    with EventLog.open(state_dir) as log:
        from pipelines.execution.interrupted import close_interrupted_runs

        close_interrupted_runs(log, state_dir, pipeline)  # a killed `ahgd run`'s (a warning each)
        request_run(log, state_dir, pipelines, pipeline, input_fd=source,
                    input_name=input_file and Path(input_file).name, resume_from=resume_from,
                    run_id=run_id, disabled=disabled, force=force, params=params)
        configured = pipelines[pipeline]
        if inprocess:
            configured._executor_arg = "inprocess"
        click.echo(f"running {run_id} here (no daemon on {state_dir}); Ctrl-C cancels it")
        context = _execute_here(configured, run_id, log, lock)
        run = log.run(run_id)
    _print_outcome(run)
    sys.exit(0 if context.state == RunState.COMPLETED else 1)


def _log_runs_here(state_dir: Path) -> None:
    """A run executed by this command (no daemon) keeps its log,
    ``<state dir>/logs/<run id>.jsonl`` (``ahgd logs``), as the daemon does: the stages'
    lines and output, from the workers, shown on the terminal too; this process's own lines
    about the run, shown only from warnings up."""
    from pipelines.execution.logsetup import RUN_LOGS_ENV, keep_run_logs

    from . import logs

    logs.configure(level="info", terminal_level="warning")
    keep_run_logs(state_dir)
    # the workers this command starts read these (pipelines/execution/worker.py, capture.py)
    os.environ[RUN_LOGS_ENV] = str(state_dir)
    os.environ.setdefault("AHGD_LOG_FORMAT", "console" if sys.stdout.isatty() else "json")


def _execute_here(pipeline: Any, run_id: str, log: Any, lock: Any = None) -> Any:
    """Run in this process; the first Ctrl-C cancels the run cleanly, a second one aborts."""
    import signal

    from pipelines.execution.plan import CancelToken

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


@click.command()
@click.argument("run_id")
@config_option(required=False)
@click.option("--no-wait", is_flag=True, help="With a daemon: return once it is queued.")
@state_dir_option
def retry(state_dir: Path, run_id: str, configs: tuple[str, ...], no_wait: bool) -> None:
    """Run a FAILED, PARKED or CANCELLED run again from its first unfinished stage; also a
    RUNNING one whose owner is gone (its process was killed)."""
    reply = ask_daemon(state_dir, {"cmd": "retry", "run_id": run_id})
    if reply is not None:
        click.echo(f"run {run_id} ({reply['pipeline']}) is queued again in the daemon "
                   f"(it was {reply['previous_state']})")
        if not no_wait:
            sys.exit(_wait_for(state_dir, run_id, None))
        return
    from state.locks import FileLock, run_lock_path

    from .names import unknown_run
    from .requests import retry as retry_run

    _log_runs_here(state_dir)

    with open_log(state_dir) as log:  # a wrong run id is said before --config is asked for
        check_name(unknown_run(log, run_id))
    pipelines, _ = _local_pipelines(state_dir, configs)  # before anything is recorded
    with open_log(state_dir) as log:
        before = log.run(run_id)
        if before is not None and before.pipeline not in pipelines:
            fail(f"pipeline {before.pipeline!r} of run {run_id} is not in the configuration given")
        lock = FileLock(run_lock_path(state_dir, run_id), {"role": "ahgd retry", "run_id": run_id},
                        remove_on_release=True).acquire()
        out = retry_run(log, run_id, state_dir, lock_held=True)
        click.echo(f"retrying {run_id} here (it was {out['previous_state']}); Ctrl-C cancels it")
        _execute_here(pipelines[out["pipeline"]], run_id, log, lock)
        run = log.run(run_id)
    _print_outcome(run)
    sys.exit(0 if run.state == RunState.COMPLETED else 1)


@click.command()
@click.argument("run_id")
@state_dir_option
def cancel(state_dir: Path, run_id: str) -> None:
    """Cancel a pending, parked or running run, or every run of a backfill not yet ended
    (RUN_ID: the backfill's id, backfill-...)."""
    from .backfill import TRIGGER

    if run_id.startswith(TRIGGER + "-"):
        _cancel_backfill(state_dir, run_id)
        return
    reply = ask_daemon(state_dir, {"cmd": "cancel", "run_id": run_id})
    if reply is None:
        from .requests import cancel_recorded

        with open_log(state_dir) as log:  # no history: nothing to cancel, and none is made
            reply = cancel_recorded(log, state_dir, run_id)
    if reply.get("cancelling"):
        click.echo(f"run {run_id} is being cancelled by the daemon")
    else:
        click.echo(f"run {run_id} cancelled (it was {reply['previous_state']})")


def _cancel_backfill(state_dir: Path, backfill_id: str) -> None:
    reply = ask_daemon(state_dir, {"cmd": "backfill.cancel", "backfill": backfill_id})
    if reply is None:
        from .backfill import cancel_group

        with open_log(state_dir) as log:
            reply = cancel_group(log, state_dir, backfill_id)
    click.echo(f"backfill {backfill_id}: {len(reply['cancelled'])} run(s) cancelled, "
               f"{len(reply['cancelling'])} being cancelled by the daemon, of {reply['runs']}")
    for line in reply["not_cancelled"]:
        click.echo(f"  not cancelled: {line}")


COMMANDS = [run_cmd, retry, cancel]
