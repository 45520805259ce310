"""``ahgd logs RUN_ID`` (one run's log, ``--follow`` while it runs) and ``ahgd runs show RUN_ID``
(one run's stages, attempts, timings, inputs, outputs and errors in one view).

Both read the history (read-only) and the run's log file; no daemon is needed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from .cli_common import check_name, fail, require_history, state_dir_option

FOLLOW_POLL_S = 0.25


def _stage_known(run: dict[str, Any], run_id: str, stage: str) -> None:
    from state.errors import did_you_mean

    stages = list(dict.fromkeys([*run["stages"], *(a["stage"] for a in run["attempts"])]))
    if stage not in stages:
        close = did_you_mean(stage, stages)
        fail(f"run {run_id!r} has no stage {stage!r}" + (f"; {close}" if close else "")
             + f" (its stages: {', '.join(stages) or 'none yet'})")


@click.command()
@click.argument("run_id")
@click.option("--stage", "-s", default=None, help="Only the lines of this stage.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing lines as they come, until the run ends (exit 0 if it "
                   "completed, 1 otherwise).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@state_dir_option
def logs(state_dir: Path, run_id: str, stage: str | None, follow: bool, as_json: bool) -> None:
    """The log lines of one run: its stages' context.log, ahgd's own lines, what its stages
    printed, tracebacks (kept in <state dir>/logs/RUN_ID.jsonl), and its events."""
    from state import ops_queries, queries
    from state.db import ReadOnlyHistory
    from state.machine import ENDED_RUN_STATES

    from .names import unknown_run
    from .runlog import RunLogReader, render

    show = (lambda r: click.echo(json.dumps(r, default=str))) if as_json else (
        lambda r: click.echo(render(r)))
    with ReadOnlyHistory(require_history(state_dir)) as history:
        check_name(unknown_run(history, run_id))
        if stage is not None:
            _stage_known(ops_queries.run_in_full(history, run_id), run_id, stage)
        reader = RunLogReader(state_dir, run_id, stage)
        for record in reader.poll(history, final=not follow):
            show(record)
        if not reader.path.exists() and not follow:
            click.echo(f"note: no log file {reader.path} (the run was executed where run logs "
                       "are not kept, or they were removed); these lines are its events", err=True)
        if not follow:
            return
        told = False
        while True:
            state = queries.run_state(history, run_id)
            ended = state in ENDED_RUN_STATES
            pause = ops_queries.pipeline_pauses(history).get(_pipeline(history, run_id))
            if state == "PENDING" and pause and not told:
                from .pausing import describe

                click.echo(f"note: run {run_id} waits: its pipeline is {describe(pause)}; "
                           "`ahgd resume` starts it", err=True)
                told = True
            for record in reader.poll(history, final=ended):
                show(record)
            sys.stdout.flush()
            if ended:
                sys.exit(0 if state == "COMPLETED" else 1)
            time.sleep(FOLLOW_POLL_S)


def _pipeline(history: Any, run_id: str) -> str | None:
    from state import queries

    summary = queries.run_summary(history, run_id)
    return summary["pipeline"] if summary else None


@click.group()
def runs() -> None:
    """One run in detail (`ahgd runs show RUN_ID`)."""


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="The whole run as one JSON document.")
@state_dir_option
def show(state_dir: Path, run_id: str, as_json: bool) -> None:
    """One run: its state and times, input and params, every stage attempt with its timings,
    rows and error, each stage's output, the tracebacks, and where its log is."""
    from state import ops_queries, runlogs
    from state.db import ReadOnlyHistory

    from .names import unknown_run

    with ReadOnlyHistory(require_history(state_dir)) as history:
        check_name(unknown_run(history, run_id))
        run = ops_queries.run_in_full(history, run_id)
    run["log_file"] = str(runlogs.run_log_path(state_dir, run_id))
    if as_json:
        click.echo(json.dumps(run, indent=2, default=str))
        return
    for line in _show_lines(run):
        click.echo(line)


def _show_lines(run: dict[str, Any]) -> list[str]:
    from .tables import render_table

    p = run["params"]
    lines = [f"run        {run['run_id']}",
             f"pipeline   {run['pipeline']}   (trigger {run['trigger']})",
             f"state      {run['state']}" + (f" at stage {run['failed_stage']}"
                                             if run.get("failed_stage") else ""),
             f"requested  {run['requested_at']}",
             f"started    {run['started_at'] or '-'}   ended {run['ended_at'] or '-'}   "
             f"running {run['duration_s'] if run['duration_s'] is not None else '-'} s   "
             f"retries {run['retries']}   recoveries {run['recoveries']}"]
    if p.get("input_file"):
        lines.append(f"input      {p['input_file']}")
        lines.append(f"           sha256 {p.get('input_sha256')}, given as "
                     f"{p.get('original_name') or Path(p['input_file']).name}")
    own = {k: v for k, v in p.items() if k not in ("input_file", "input_sha256", "original_name")}
    if own:
        lines.append("params     " + "  ".join(f"{k}={json.dumps(v)}" for k, v in own.items()))
    if run.get("error"):
        lines.append(f"error      {run['error']}")
    attempts = run["attempts"]
    lines += ["", "stages"]
    if attempts:
        rows = [{**a, "attempt": a["attempt"] or "-"} for a in attempts]  # 0: skipped, reused
        lines += ["  " + line for line in render_table(rows, [
            "stage", "attempt", "state", "started_at", "duration_s", "rows", "rows_rejected",
            "cpu_s", "peak_rss_mb", "error"], max_width=50).splitlines()]
    else:
        lines.append("  (no stage has started)")
    outputs = [(a, a["detail"].get("output")) for a in attempts
               if a["state"] == "COMPLETED" and a["detail"].get("output")]
    if outputs:
        lines += ["", "outputs"]
        for a, ref in outputs:
            lines.append(f"  {a['stage']}#{a['attempt']}: {_describe_output(ref)}")
    failed = [a for a in attempts if a["detail"].get("traceback") or
              (a["error"] and a["state"] in ("FAILED", "TIMED_OUT", "INTERRUPTED", "INVALIDATED"))]
    if failed:
        lines += ["", "errors"]
        for a in failed:
            retry = a["detail"].get("retry") or {}
            lines.append(f"  {a['stage']}#{a['attempt']} {a['state']}: {a['error']}")
            if retry.get("why"):
                lines.append(f"    retried: {'yes' if retry.get('decision') else 'no'} "
                             f"({retry['why']})")
            trace = a["detail"].get("traceback")
            if trace:
                lines += ["    " + t for t in trace.rstrip().splitlines()[-12:]]
    lines += ["", f"log        ahgd logs {run['run_id']}   ({run['log_file']})"]
    return lines


def _describe_output(ref: dict[str, Any]) -> str:
    kind = ref.get("kind")
    if kind == "tables":
        tables = ", ".join(f"{t} ({n} rows)" for t, n in (ref.get("tables") or {}).items())
        where = ("the event log (inline)" if ref.get("format") == "inline"
                 else ref.get("path"))
        return f"tables {tables} in {where} (`ahgd export TABLE --run ... --stage ...`)"
    if kind == "value":
        if ref.get("format") == "inline":
            return "value " + json.dumps(ref.get("value"), default=str)[:200]
        return f"value in {ref.get('path')}"
    return "nothing"


COMMANDS = [logs, runs]
