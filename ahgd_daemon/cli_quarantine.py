"""``ahgd quarantine list|release|purge``: the files set aside under ``<state dir>/quarantine/``.

Listing reads the folder and its ``.reason.json`` files (no daemon needed).
Releasing and purging change things, so they go through the daemon when one
runs on the state directory (it records the event and moves the file); without
one they are done here (``release`` then needs ``--config`` to know the
pipeline's drop folder).  The work itself is :mod:`ahgd_daemon.quarantine`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .cli_common import ask_daemon, config_option, fail, open_log, state_dir_option


@click.group("quarantine")
def quarantine_group() -> None:
    """Files set aside instead of run: list them, put them back, or remove old ones."""


def _check_pipeline(state_dir: Path, pipeline: str | None) -> None:
    """A ``--pipeline`` that names nothing here: the known ones and a did-you-mean."""
    if pipeline is None:
        return
    from state import HISTORY_DB, ops_queries
    from state.db import ReadOnlyHistory
    from state.errors import did_you_mean

    from .quarantine import QUARANTINE_DIR

    root = state_dir / QUARANTINE_DIR
    known = set(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else set()
    if (state_dir / HISTORY_DB).exists():
        with ReadOnlyHistory(state_dir / HISTORY_DB) as history:
            known.update(ops_queries.known_pipelines(history))
    if pipeline not in known:
        close = did_you_mean(pipeline, known)
        fail(f"no pipeline {pipeline!r} in this state directory" + (f"; {close}" if close else "")
             + f" (known: {', '.join(sorted(known)) or 'none yet'})")


@quarantine_group.command("list")
@click.option("--pipeline", "-p", default=None, help="Only this pipeline's files.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per file.")
@state_dir_option
def list_cmd(state_dir: Path, pipeline: str | None, as_json: bool) -> None:
    """The quarantined files, oldest first: file, pipeline, reason, when, run."""
    from .quarantine import listing
    from .tables import render_table

    _check_pipeline(state_dir, pipeline)
    items = [q.as_json() for q in listing(state_dir, pipeline)]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("the quarantine is empty" + (f" for pipeline {pipeline!r}" if pipeline else ""))
        return
    rows = [{**q, "when": q["quarantined_at"], "run": q["run_id"] or "-",
             "path": Path(q["path"]).name} for q in items]
    click.echo(render_table(rows, ["file", "pipeline", "reason", "when", "run", "bytes"],
                            max_width=70))
    click.echo(f"\n{len(items)} file(s) under {state_dir / 'quarantine'}; `ahgd quarantine "
               "release FILE` puts one back into its drop folder, `ahgd quarantine purge "
               "--older-than 30d` removes old ones")


@quarantine_group.command("release")
@click.argument("files", nargs=-1, required=True)
@config_option(required=False)
@state_dir_option
def release_cmd(state_dir: Path, files: tuple[str, ...], configs: tuple[str, ...]) -> None:
    """Put quarantined files back into their pipeline's drop folder, to be taken again (the
    same bytes are not called a duplicate).  FILE: its name, its path as listed, or the
    start of its SHA-256."""
    reply = ask_daemon(state_dir, {"cmd": "quarantine.release", "files": list(files)})
    if reply is None:
        from pipelines.config import load_config

        from .operations import drop_folder_of
        from .quarantine import release, resolve

        if not configs:
            fail(f"no daemon is running on {state_dir}, so --config is needed to know the "
                 "drop folders to release into (or start the daemon)")
        config = load_config([Path(c) for c in configs], state_dir=state_dir)
        items = resolve(state_dir, list(files))
        with open_log(state_dir) as log:
            reply = {"released": [release(log, item, drop_folder_of(config, item.pipeline))
                                  for item in items]}
    for item in reply["released"]:
        click.echo(f"released {item['file']} ({item['pipeline']}) -> {item['to']}")
    click.echo("the drop folder takes them as new arrivals (the daemon watching it runs them)")


@quarantine_group.command("purge")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Remove files quarantined more than this long ago: 30d, 12h, 2w, P30D; 0 "
                   "for all.")
@click.option("--pipeline", "-p", default=None, help="Only this pipeline's files.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="What was removed, as JSON.")
@state_dir_option
def purge_cmd(state_dir: Path, older_than: str, pipeline: str | None, dry_run: bool,
              as_json: bool) -> None:
    """Remove quarantined files older than --older-than, each recorded as file.expired."""
    from .quarantine import parse_age, purge

    _check_pipeline(state_dir, pipeline)
    age = parse_age(older_than)
    reply = ask_daemon(state_dir, {"cmd": "quarantine.purge", "older_than_s":
                                   age.total_seconds(), "pipeline": pipeline,
                                   "dry_run": dry_run, "rule": f"--older-than {older_than}"})
    if reply is None:
        from state import utc_now

        with open_log(state_dir) as log:
            reply = purge(log, state_dir, age, utc_now(), pipeline=pipeline, dry_run=dry_run,
                          rule=f"--older-than {older_than}")
    if as_json:
        click.echo(json.dumps(reply, indent=2, default=str))
        return
    _print_purge(reply)


def _print_purge(reply: dict[str, Any]) -> None:
    verb = "would remove" if reply["dry_run"] else "removed"
    for item in reply["removed"]:
        click.echo(f"{verb} {item['path']} ({item['pipeline']}, quarantined "
                   f"{item['quarantined_at']}: {item['reason']})")
    click.echo(f"{verb} {len(reply['removed'])} file(s), {reply['bytes']:,} bytes, quarantined "
               f"before {reply['cutoff']}; {reply['kept']} file(s) kept")


COMMANDS = [quarantine_group]
