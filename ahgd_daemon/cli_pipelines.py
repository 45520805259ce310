"""``ahgd pause`` / ``ahgd resume`` (a pipeline's runs wait, then go on), ``ahgd pipelines``
(each configured pipeline with its triggers, state, last run and next tick) and ``ahgd
backfill`` (one run per past tick of a schedule).

Through the daemon when one runs on the state directory; without one, pause
and resume are recorded here (the next daemon reads them from the log), and
``pipelines`` and ``backfill`` read the configuration given with ``--config``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .cli_common import (ask_daemon, config_option, fail, history_answer, open_log,
                         state_dir_option)


def _local_config(state_dir: Path, configs: tuple[str, ...], what: str) -> Any:
    if not configs:
        fail(f"no daemon is running on {state_dir}, so --config is needed to {what} (or start "
             "the daemon: ahgd daemon --config FILE)")
    from pipelines.config import load_config

    return load_config([Path(c) for c in configs], state_dir=state_dir)


def _names(state_dir: Path, configs: tuple[str, ...], log: Any) -> tuple[list[str], bool]:
    """The pipelines a name is checked against: the configuration's, else the history's."""
    if configs:
        return list(_local_config(state_dir, configs, "").pipelines), False
    from state import ops_queries

    return ops_queries.known_pipelines(log), True


@click.command()
@click.argument("pipeline")
@click.option("--reason", "-r", default=None, help="Why (shown by `ahgd status`).")
@config_option(required=False)
@state_dir_option
def pause(state_dir: Path, pipeline: str, reason: str | None, configs: tuple[str, ...]) -> None:
    """Pause a pipeline: files that arrive are taken and their runs wait, schedule ticks are
    recorded skipped, nothing of it starts until `ahgd resume` (running runs finish)."""
    from .pausing import client_sudo_user, describe, local_by, pause as record

    reply = ask_daemon(state_dir, {"cmd": "pipeline.pause", "pipeline": pipeline,
                                   "reason": reason, "sudo_user": client_sudo_user()})
    if reply is None:
        from state import queries

        with open_log(state_dir, must_exist=not configs) as log:
            known, from_history = _names(state_dir, configs, log)
            reply = record(log, pipeline, known, reason, local_by(), from_history=from_history)
            reply["waiting"] = len(queries.pending_runs(log, [pipeline], 100_000))
    pause_ = reply["pause"]
    click.echo(f"pipeline {pipeline} is {describe(pause_)}")
    click.echo(f"  {reply.get('waiting') or 0} run(s) of it wait; files that arrive are taken "
               "and their runs wait too; its schedule's ticks are recorded skipped; runs "
               "already running finish")
    click.echo(f"  `ahgd resume {pipeline}` resumes it")


@click.command()
@click.argument("pipeline")
@config_option(required=False)
@state_dir_option
def resume(state_dir: Path, pipeline: str, configs: tuple[str, ...]) -> None:
    """Resume a paused pipeline: its waiting runs start, and the ticks skipped while it was
    paused run as each schedule's misfire policy says (skip: none, latest, all)."""
    from .pausing import client_sudo_user, describe, local_by, resume as record

    reply = ask_daemon(state_dir, {"cmd": "pipeline.resume", "pipeline": pipeline,
                                   "sudo_user": client_sudo_user()})
    here = reply is None
    if here:
        with open_log(state_dir) as log:
            known, from_history = _names(state_dir, configs, log)
            reply = record(log, pipeline, known, local_by(), from_history=from_history)
    click.echo(f"pipeline {pipeline} resumed (it was {describe(reply['was'])})")
    if here:
        click.echo("  no daemon runs here: its waiting runs start when one does, and the ticks "
                   "missed meanwhile follow each schedule's misfire policy then")
        return
    fired = reply.get("fired") or []
    click.echo(f"  {len(fired)} skipped tick(s) fired by the misfire policy"
               + (f": {', '.join(fired)}" if fired else "") + "; its waiting runs start now")


@click.command("pipelines")
@config_option(required=False)
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per pipeline.")
@state_dir_option
def pipelines_cmd(state_dir: Path, configs: tuple[str, ...], as_json: bool) -> None:
    """The configured pipelines: triggers, state (active, paused, disabled), last run, next
    scheduled tick."""
    reply = ask_daemon(state_dir, {"cmd": "pipelines"})
    if reply is not None:
        doc = reply["pipelines"]
    else:
        from state import utc_now

        from .pipelineview import document

        config = _local_config(state_dir, configs, "list the pipelines")
        doc = history_answer(state_dir, lambda history: document(config, history, utc_now()))
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    from .tables import render_table

    rows = []
    for p in doc:
        last = p.get("last_run")
        rows.append({"pipeline": p["name"], "state": p["state"],
                     "triggers": "; ".join(t["text"] for t in p["triggers"]) or "none (ahgd run)",
                     "last run": f"{last['state']} {last['requested_at']} ({last['run_id']})"
                     if last else "never", "next tick": p.get("next_tick") or "-"})
    click.echo(render_table(rows, ["pipeline", "state", "triggers", "last run", "next tick"],
                            max_width=80))
    from .pausing import describe

    for p in doc:
        if p.get("pause"):
            click.echo(f"\n{p['name']}: {describe(p['pause'])} (`ahgd resume {p['name']}`)")


@click.command()
@click.argument("pipeline")
@click.option("--from", "start", required=True, metavar="DATE",
              help="First day (YYYY-MM-DD, in the schedule's time zone) or time (ISO 8601).")
@click.option("--to", "end", required=True, metavar="DATE",
              help="Last day (included) or time.")
@click.option("--trigger", default=None, help="Which schedule, when the pipeline has several.")
@click.option("--dry-run", is_flag=True, help="Say what would be requested; request nothing.")
@click.option("--json", "as_json", is_flag=True, help="The plan and what was requested, as JSON.")
@config_option(required=False)
@state_dir_option
def backfill(state_dir: Path, pipeline: str, start: str, end: str, trigger: str | None,
             dry_run: bool, as_json: bool, configs: tuple[str, ...]) -> None:
    """One run per tick of a pipeline's schedule from --from to --to, with the tick's time as
    fire_time; ticks that ran already are left alone (a second backfill is a no-op)."""
    payload = {"cmd": "backfill", "pipeline": pipeline, "from": start, "to": end,
               "trigger": trigger, "dry_run": dry_run}
    out = ask_daemon(state_dir, payload, timeout=120)
    here = out is None
    if here:
        from state import utc_now

        from .operations import run_backfill
        from .requests import RequestError

        config = _local_config(state_dir, configs, "backfill")
        disabled = {n: p.master or p.source for n, p in config.pipelines.items() if not p.enabled}
        with (_looking(state_dir) if dry_run else open_log(state_dir, must_exist=False)) as log:
            try:
                out = run_backfill(log, config, disabled, pipeline, start, end, trigger,
                                   utc_now(), dry_run=dry_run)
            except RequestError as exc:
                fail(str(exc))
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    _print_backfill(out, state_dir, here, dry_run)


@contextlib.contextmanager
def _looking(state_dir: Path) -> Iterator[Any]:
    """The history read-only (or, before the first run, an empty one in a temporary
    directory): a dry run writes nothing to the state directory."""
    from state import HISTORY_DB, EventLog
    from state.db import ReadOnlyHistory

    if (state_dir / HISTORY_DB).exists():
        with ReadOnlyHistory(state_dir / HISTORY_DB) as history:
            yield history
        return
    with tempfile.TemporaryDirectory(prefix="ahgd-dry-run-") as tmp, EventLog.open(tmp) as log:
        yield log


def _print_backfill(out: dict[str, Any], state_dir: Path, here: bool, dry_run: bool) -> None:
    from .pausing import describe

    new = out["ticks"] - out["already_run"]
    click.echo(f"backfill {out['backfill']}")
    click.echo(f"  {out['pipeline']}, schedule {out['trigger']}: {out['ticks']} tick(s) from "
               f"{out['from']} to {out['to']}")
    if dry_run:
        click.echo(f"  would request {new} run(s); {out['already_run']} tick(s) ran already "
                   "(left alone)" + (f"; {out['after_now']} come after now (the schedule's)"
                                     if out["after_now"] else ""))
        return
    click.echo(f"  requested {len(out['requested'])} run(s); {out['already_run']} tick(s) ran "
               "already (left alone)" + (f"; {out['after_now']} come after now (the "
                                         "schedule's)" if out["after_now"] else ""))
    if out.get("paused"):
        click.echo(f"  the pipeline is {describe(out['paused'])}: the runs wait for `ahgd "
                   f"resume {out['pipeline']}`")
    if here:
        click.echo(f"  no daemon runs on {state_dir}: the runs wait for one (ahgd daemon "
                   "--config FILE, or with --once to run them and exit)")
    click.echo(f"  at most max_workers of them run at once; follow with `ahgd history "
               f"--pipeline {out['pipeline']} --trigger backfill`; `ahgd cancel "
               f"{out['backfill']}` cancels those not yet ended")


COMMANDS = [pause, resume, pipelines_cmd, backfill]
