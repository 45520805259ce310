"""``ahgd gc``: what retention removes from the state directory (or would, ``--dry-run``), with sizes.

With a daemon on the state directory the daemon collects, by its own configuration's
``retain:`` policy (``ahgd_daemon/collection.py``); without one the collection runs here,
by the policy of the ``--config`` files given, holding the daemon's lock so that no daemon
starts meanwhile.  Either way it prints one line per thing removed (area, path, size,
rule, why) and a summary, or the whole report as ``--json``.  On a full disk it uses the
room retention keeps (``<state dir>/.reserve``, ``ahgd_daemon/removal.py``) to open the
history and record its removals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .cli_common import ask_daemon, config_option, fail, open_log, state_dir_option

_REASON_WIDTH = 110


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Say what would be removed, remove nothing.")
@click.option("--pipeline", "-p", default=None, metavar="NAME",
              help="Only what belongs to this pipeline (runs' outputs, inputs, set-aside files).")
@click.option("--json", "as_json", is_flag=True, help="The whole report as one JSON object.")
@config_option(required=False)
@state_dir_option
def gc(state_dir: Path, dry_run: bool, pipeline: str | None, as_json: bool,
       configs: tuple[str, ...]) -> None:
    """Remove what the retain: policy lets go: old runs' outputs, old inputs, duplicates,
    quarantined files, DuckDB spill files, and (with daemon.object_store) the same in the
    bucket.  Every removal is recorded (data.expired,
    file.expired); runs that may still run or be retried lose nothing."""
    with _open_log(state_dir) as log:
        _check_pipeline(log, pipeline)
    reply = ask_daemon(state_dir, {"cmd": "gc", "dry_run": dry_run, "pipeline": pipeline},
                       timeout=3600.0)
    if reply is not None:
        report, where = reply["gc"], "by the daemon (its configuration's retain:)"
    else:
        report, where = _collect_here(state_dir, configs, dry_run, pipeline), "here"
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print(report, where)


def _open_log(state_dir: Path) -> Any:
    """The event log, on a full disk too: the reserve retention keeps is released if SQLite
    cannot open it without (``ahgd_daemon/removal.py``), so that the collection can run."""
    from .removal import open_with_room

    return open_with_room(state_dir, lambda: open_log(state_dir))


def _check_pipeline(log: Any, pipeline: str | None) -> None:
    if pipeline is None:
        return
    from state import queries
    from state.errors import did_you_mean

    known = queries.pipelines_with_runs(log)
    if pipeline not in known:
        hint = did_you_mean(pipeline, known)
        fail(f"no runs of pipeline {pipeline!r} in this history, so nothing of it to collect"
             + (f"; {hint}" if hint else f" (its pipelines: {', '.join(known) or 'none yet'})"))


def _collect_here(state_dir: Path, configs: tuple[str, ...], dry_run: bool,
                  pipeline: str | None) -> dict[str, Any]:
    if not configs:
        fail("no daemon is running on this state directory, so --config is needed: the "
             "retain: sections of your master and pipeline files say what to keep (e.g. "
             "ahgd gc --config master.yaml --dry-run)", code=2)
    from pipelines.config import load_config
    from state.locks import FileLock, Locked

    from .collection import config_policy, configured_store
    from .daemon import LOCK_NAME
    from .removal import Collector

    loaded = load_config([Path(c) for c in configs], state_dir=state_dir)
    lock = FileLock(state_dir / LOCK_NAME, {"command": "ahgd gc"})
    try:
        lock.acquire()
    except Locked as exc:
        fail(f"{exc}: a daemon started on this state directory meanwhile; run ahgd gc again "
             "(the daemon then collects)")
    try:
        with _open_log(state_dir) as log:
            return Collector(log, state_dir, config_policy(loaded),
                             store=configured_store(loaded.daemon)).run(
                dry_run=dry_run, pipeline=pipeline).as_dict()
    finally:
        lock.release()


def _print(report: dict[str, Any], where: str) -> None:
    from state.removals import human_bytes as format_size

    items = report["items"]
    verb = "would remove" if report["dry_run"] else "removed"
    if items:
        rows = [("area", "path", "size", "rule", "why")] + [
            (i["area"], i["path"], format_size(i["bytes"]), i["rule"],
             _short(i["reason"])) for i in items]
        widths = [max(len(r[n]) for r in rows) for n in range(4)]
        for row in rows:
            click.echo("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
        click.echo("")
    by_area = ", ".join(f"{a} {format_size(b)}" for a, b in report["by_area"].items() if b)
    scope = f" of pipeline {report['pipeline']}" if report.get("pipeline") else ""
    click.echo(f"{verb} {report['count']} thing{'s' if report['count'] != 1 else ''}{scope}, "
               f"{format_size(report['bytes'])}" + (f" ({by_area})" if by_area else "")
               + f"; collected {where} in {report['duration_s']} s")
    if report["kept"]:
        click.echo("kept: " + "; ".join(f"{n} {why}" for why, n in sorted(report["kept"].items())))
    if report.get("skipped"):
        click.echo(f"skipped {len(report['skipped'])} that changed meanwhile (a run retried, a "
                   "file gone): the next collection looks again")
    if report.get("bucket_error"):
        click.echo(f"object store: {report['bucket_error']}")
    if report.get("bucket_leftovers"):
        click.echo(f"deleted {report['bucket_leftovers']} object(s) left in the object store by "
                   "removals recorded before (it could not be reached then)")
    if report.get("over_budget_bytes"):
        click.echo(f"data/ stays {format_size(report['over_budget_bytes'])} over "
                   "retain.data_budget: what is left is needed (see README, Retention)")
    if report.get("reserve_released_bytes"):
        click.echo(f"the disk was full: {format_size(report['reserve_released_bytes'])} of the "
                   "room kept for this (.reserve in the state directory) let these removals be "
                   "recorded; it is made again once the disk has room (see README, Retention)")
    sizes = dict(report.get("sizes_before") or {})
    bucket = sizes.pop("bucket", 0)
    if sizes and not report.get("pipeline"):
        click.echo("state directory before: " + ", ".join(
            f"{a} {format_size(b)}" for a, b in sizes.items())
            + (f"; object store (bucket) {format_size(bucket)}" if bucket else ""))


def _short(text: str) -> str:
    return text if len(text) <= _REASON_WIDTH else text[:_REASON_WIDTH - 1] + "…"


COMMANDS = [gc]
