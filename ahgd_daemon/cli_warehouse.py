"""``ahgd warehouse rebuild``: reload a lost warehouse by running its loads again.

Through the daemon when one runs on the state directory (it plans, and runs
what is asked, one request per run, each with its stored input file passed
open), else here in the foreground (``--config`` needed), like ``ahgd run``.
Waves run one after another, so a pipeline runs after everything it depends
on; within a wave, different pipelines run at once and the runs of one
pipeline one after another, in the order their inputs last loaded.  When
every run has completed, the ``warehouse.lost`` alert is resolved.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import click

from .cli_common import ask_daemon, config_option, fail, require_history, state_dir_option


@click.group("warehouse")
def warehouse_group() -> None:
    """The warehouse the loaders write (<state dir>/warehouse.duckdb)."""


@warehouse_group.command("rebuild")
@click.option("--pipeline", "only", multiple=True, metavar="NAME",
              help="Rebuild what this pipeline loaded, and what depends on it (repeatable). "
                   "Default: every pipeline whose runs loaded the warehouse.")
@config_option(required=False)
@click.option("--dry-run", is_flag=True, help="Print the runs it would request, and stop.")
@click.option("--inprocess", is_flag=True, help="Without a daemon: run stages on threads.")
@state_dir_option
def rebuild_cmd(state_dir: Path, only: tuple[str, ...], configs: tuple[str, ...], dry_run: bool,
                inprocess: bool) -> None:
    """Reload the warehouse: run again, from the stored input files, the runs that loaded it.

    Each pipeline that loaded it runs once per distinct input file of its
    completed runs (the same bytes, from the state directory's store), in the
    order they last loaded; pipelines that depend on others run after them.
    The warehouse.lost alert is resolved once every run has completed.  To
    start from an empty warehouse, move the old file aside first.
    """
    from . import rebuild

    rebuild_id = datetime.now(timezone.utc).strftime("rebuild-%Y%m%dT%H%M%S-") + secrets.token_hex(3)
    reply = ask_daemon(state_dir, {"cmd": "warehouse.plan", "pipelines": list(only)})
    if reply is not None:
        waves = rebuild.from_json(reply["waves"])
        _show(state_dir, waves, "the daemon")
        if dry_run:
            return
        runs = _through_daemon(state_dir, waves, rebuild_id)
        done = ask_daemon(state_dir, {"cmd": "warehouse.rebuilt", "runs": runs})
        click.echo(f"the warehouse is rebuilt ({len(runs)} run(s)); {done['outcome']}")
        return
    _here(state_dir, only, configs, dry_run, inprocess, rebuild_id)


def _here(state_dir: Path, only: tuple[str, ...], configs: tuple[str, ...], dry_run: bool,
          inprocess: bool, rebuild_id: str) -> None:
    from pipelines.base import new_run_id
    from state import EventLog
    from state.locks import FileLock, run_lock_path

    from . import logs, rebuild
    from .cli_runs import _execute_here, _print_outcome
    from .configuration import load_setup
    from .requests import request_run

    require_history(state_dir)  # nothing ever ran here: nothing to reload (and none is made)
    if not configs:
        fail("no daemon is running on this state directory, so --config is needed to rebuild "
             "here (or start the daemon: ahgd daemon --config FILE)")
    logs.configure(level="warning")
    setup = load_setup([Path(c) for c in configs], state_dir)
    runs: list[str] = []
    with EventLog.open(state_dir) as log:
        waves = rebuild.plan(log, state_dir, setup.pipelines, setup.dependencies,
                             setup.downstream_of, list(only))
        _show(state_dir, waves, "this process (no daemon runs on it)")
        if dry_run:
            return
        for wave in waves:
            for replay in wave:
                pipeline = setup.pipelines[replay.pipeline]
                if inprocess:
                    pipeline._executor_arg = "inprocess"
                run_id = new_run_id(replay.pipeline)
                lock = FileLock(run_lock_path(state_dir, run_id), {"role": "ahgd warehouse rebuild",
                                                                   "run_id": run_id},
                                remove_on_release=True).acquire()
                with _stored_input(replay) as fd:
                    request_run(log, state_dir, setup.pipelines, replay.pipeline, input_fd=fd,
                                input_name=replay.original_name or _name(replay),
                                params=rebuild.request_params(replay, rebuild_id),
                                trigger=rebuild.TRIGGER, run_id=run_id)
                _execute_here(pipeline, run_id, log, lock)
                run = log.run(run_id)
                _print_outcome(run)
                runs.append(run_id)
                if run.state != "COMPLETED":
                    _stopped(run)
        click.echo(f"the warehouse is rebuilt ({len(runs)} run(s)); {rebuild.finish(log, runs)}")


def _through_daemon(state_dir: Path, waves: list, rebuild_id: str) -> list[str]:
    """Ask the daemon for each run, wave by wave; the run ids, once all completed."""
    from state import EventLog
    from state.machine import ENDED_RUN_STATES

    from . import rebuild
    from .cli_runs import _print_outcome

    runs: list[str] = []
    with EventLog.open(state_dir) as log:
        for wave in waves:
            queues: dict[str, list] = {}
            for replay in wave:
                queues.setdefault(replay.pipeline, []).append(replay)
            running: dict[str, str] = {}
            failed = None
            while queues or running:
                for name in [n for n in queues if n not in running]:
                    replay = queues[name].pop(0)
                    if not queues[name]:
                        del queues[name]
                    with _stored_input(replay) as fd:
                        reply = ask_daemon(state_dir, {
                            "cmd": "warehouse.run", "pipeline": replay.pipeline,
                            "input_name": replay.original_name or _name(replay),
                            "params": rebuild.request_params(replay, rebuild_id)},
                            timeout=600, fds=[fd] if fd is not None else [])
                    running[name] = reply["run_id"]
                    runs.append(reply["run_id"])
                for name, run_id in list(running.items()):
                    run = log.run(run_id)
                    if run is not None and run.state in ENDED_RUN_STATES:
                        _print_outcome(run)
                        del running[name]
                        if run.state != "COMPLETED":
                            failed, queues = failed or run, {}  # let the others end, start none
                time.sleep(0.2)
            if failed is not None:
                _stopped(failed)
    return runs


def _show(state_dir: Path, waves: list, where: str) -> None:
    count = sum(len(w) for w in waves)
    click.echo(f"rebuilding {state_dir / 'warehouse.duckdb'}: {count} run(s) in {len(waves)} "
               f"wave(s), run by {where}")
    for i, wave in enumerate(waves, start=1):
        click.echo(f"  wave {i}: " + ", ".join(r.describe(state_dir) for r in wave))


def _stopped(run: Any) -> None:
    fail(f"the rebuild stopped: run {run.run_id} of pipeline {run.pipeline!r} ended {run.state}"
         f"{': ' + run.error if run.error else ''}; fix that, then run `ahgd warehouse rebuild` "
         "again (the warehouse.lost alert stays open until a rebuild completes)")


def _name(replay: Any) -> str | None:
    return Path(replay.input_file).name if replay.input_file else None


@contextlib.contextmanager
def _stored_input(replay: Any) -> Iterator[int | None]:
    """The replayed run's input file from the store, open, checked against its recorded
    SHA-256 (a file altered in the store would load other data than the run did)."""
    if not replay.input_file:
        yield None
        return
    try:
        fd = os.open(replay.input_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        fail(f"cannot read {replay.input_file}, the input of run {replay.replays}: "
             f"{exc.strerror}; drop that file again, or rebuild the other pipelines with --pipeline")
    try:
        digest, offset = hashlib.sha256(), 0
        while chunk := os.pread(fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        if replay.input_sha256 and digest.hexdigest() != replay.input_sha256:
            fail(f"{replay.input_file}, the input of run {replay.replays}, no longer matches its "
                 f"recorded SHA-256 ({replay.input_sha256}): it was altered in the store, so "
                 "replaying it would load other data; drop the original file again")
        yield fd
    finally:
        os.close(fd)


COMMANDS = [warehouse_group]
