"""``ahgd history`` and ``ahgd events``: what ran, and the raw event log, on the terminal or as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_common import check_name, fail, open_log, state_dir_option

#: the triggers a run can have, whether or not the history has one yet
TRIGGERS = ("manual", "drop_folder", "schedule", "upstream", "backfill", "rebuild",
            "orchestrator", "script")


def _since(text: str) -> str:
    """``--since``: a date (its start, UTC) or an ISO 8601 time, as the history's timestamps."""
    from datetime import date, datetime, timezone

    from state import format_ts

    try:
        day = date.fromisoformat(text)
        return format_ts(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since {text!r} is not a date or a time; use YYYY-MM-DD (a day, from its start "
             "in UTC) or ISO 8601 such as 2026-12-01T02:00:00+11:00")
    return format_ts(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def _one_of(option: str, value: str, known: list[str]) -> None:
    from state.errors import did_you_mean

    if value not in known:
        starting = [k for k in known if k.startswith(value)]
        close = (f"did you mean {starting[0]!r}?" if len(starting) == 1
                 else did_you_mean(value, known))
        fail(f"{option} {value!r} is not one of {', '.join(known)}" + (f"; {close}" if close
                                                                          else ""))


@click.command()
@click.option("--pipeline", "-p", default=None, help="Only runs of this pipeline.")
@click.option("--state", "state", default=None, metavar="STATE",
              help="Only runs in this state: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, "
                   "PARKED.")
@click.option("--trigger", default=None, metavar="TRIGGER",
              help="Only runs started by this trigger: manual, drop_folder, schedule, upstream, "
                   "backfill, rebuild.")
@click.option("--since", default=None, metavar="DATE",
              help="Only runs requested at or after this day (UTC) or ISO 8601 time.")
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of run_history rows.")
@state_dir_option
def history(state_dir: Path, pipeline: str | None, state: str | None, trigger: str | None,
            since: str | None, limit: int, as_json: bool) -> None:
    """Recent runs, newest first (the run_history view), filtered by pipeline, state, trigger
    and time of request."""
    from state import RunState, ops_queries, queries
    from state.orphans import owners_gone

    from .names import pipeline_without_runs
    from .tables import render_table

    if state is not None:
        state = state.upper()
        _one_of("--state", state, [s.value for s in RunState])
    since_ts = _since(since) if since is not None else None
    with open_log(state_dir) as log:
        if pipeline is not None:
            check_name(pipeline_without_runs(log, pipeline))
        if trigger is not None:
            _one_of("--trigger", trigger, sorted({*TRIGGERS, *ops_queries.run_triggers(log)}))
        records = queries.run_history(log, pipeline=pipeline, limit=limit, newest_first=True,
                                      state=state, trigger=trigger, since=since_ts)
        gone = owners_gone(log, state_dir, pipeline=pipeline) if any(
            r["state"] == RunState.RUNNING for r in records) else {}
    for record in records:  # RUNNING, and nobody runs it: its process was killed
        if record["run_id"] in gone:
            record["owner_gone"] = gone[record["run_id"]].as_dict()
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        filters = [f"{k} {v}" for k, v in (("pipeline", pipeline), ("state", state),
                                            ("trigger", trigger), ("since", since)) if v]
        click.echo("no runs" + (f" match: {', '.join(filters)}" if filters else " yet"))
        return
    shown = [{**r, "state": f"{r['state']} ({r['owner_gone']['text']})"} if "owner_gone" in r
             else r for r in records]
    click.echo(render_table(shown, ["run_id", "pipeline", "trigger", "state", "started_at",
                                    "duration_s", "error"]))
    if gone:
        click.echo(f"\n{len(gone)} run(s) RUNNING with their owner gone (killed, or the machine "
                   "went down): `ahgd retry RUN_ID` resumes one at its first unfinished stage; "
                   "a running daemon recovers them itself")


@click.command()
@click.option("--run", "run_id", default=None, help="Only events of this run.")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable).")
@click.option("--after", default=0, show_default=True, help="Only events with seq greater than this.")
@click.option("--limit", "-n", default=None, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of events.")
@state_dir_option
def events(state_dir: Path, run_id: str | None, types: tuple[str, ...], after: int,
           limit: int | None, as_json: bool) -> None:
    """The raw event log, oldest first."""
    from .names import unknown_event_types, unknown_run

    with open_log(state_dir) as log:
        check_name(unknown_event_types(types))
        if run_id is not None:
            check_name(unknown_run(log, run_id, any_event=True))
        found = log.events(run_id=run_id, types=types or None, after=after, limit=limit)
    records = [
        {"seq": e.seq, "ts": e.ts, "type": e.type, "run_id": e.run_id, "stage": e.stage,
         "attempt": e.attempt, "payload": e.payload, "idempotency_key": e.idempotency_key}
        for e in found
    ]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    for r in records:
        where = " ".join(x for x in (r["run_id"], r["stage"] and f"{r['stage']}#{r['attempt']}") if x)
        payload = json.dumps(r["payload"], sort_keys=True) if r["payload"] else ""
        click.echo(f"{r['seq']:>6}  {r['ts']}  {r['type']:<22} {where}  {payload}".rstrip())


COMMANDS = [history, events]
