"""``ahgd status`` and ``ahgd metrics``: from the daemon if one runs, else from the history alone.

Without a daemon the same documents come from a monitor seeded through a
read-only connection to the history: looking never writes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .cli_common import ask_daemon, require_history, state_dir_option


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The dashboard document, for scripts.")
@click.option("--recent", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Last runs shown per pipeline.")
@state_dir_option
def status(state_dir: Path, as_json: bool, recent: int) -> None:
    """Active runs with progress, the last runs, open alerts and system figures."""
    reply = ask_daemon(state_dir, {"cmd": "dashboard", "recent": recent})
    if reply is not None:
        doc = reply["dashboard"]
    else:
        doc = _history_dashboard(state_dir, recent)
    if "paused" not in doc:  # a daemon from before pausing, or none: the history says
        doc["paused"] = _pauses(state_dir)
    if "storage" not in doc:  # no daemon: the state directory measured here
        doc["storage"] = _storage(state_dir)
    _mark_owners_gone(doc, state_dir)
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    from rich.console import Console

    from .statusview import render_status

    render_status(doc, console=Console(), recent=recent, state_dir=str(state_dir))


def _mark_owners_gone(doc: dict[str, Any], state_dir: Path) -> None:
    """``owner_gone`` ({pid, host, text}) on each run of the document that the log says is
    RUNNING while no process holds it (a killed script or ``ahgd run``)."""
    from state import HISTORY_DB
    from state.db import ReadOnlyHistory
    from state.orphans import owners_gone

    if not (state_dir / HISTORY_DB).exists():
        return
    with ReadOnlyHistory(state_dir / HISTORY_DB) as history:
        gone = owners_gone(history, state_dir)
    recent = doc.get("recent_runs") if isinstance(doc.get("recent_runs"), dict) else {}
    for run in [*(doc.get("active_runs") or []), *(r for rs in recent.values() for r in rs)]:
        if isinstance(run, dict) and run.get("run_id") in gone:
            run["owner_gone"] = gone[run["run_id"]].as_dict()


def _pauses(state_dir: Path) -> dict[str, Any]:
    """The pipelines paused by hand (``ahgd pause``): who, when, why."""
    from state import HISTORY_DB, ops_queries
    from state.db import ReadOnlyHistory

    if not (state_dir / HISTORY_DB).exists():
        return {}
    with ReadOnlyHistory(state_dir / HISTORY_DB) as history:
        return {name: {k: v for k, v in pause.items() if k != "seq"}
                for name, pause in ops_queries.pipeline_pauses(history).items()}


def _storage(state_dir: Path) -> dict[str, Any]:
    """Sizes by area, walked now, and the last collection, from the event log."""
    from state import HISTORY_DB
    from state.db import ReadOnlyHistory

    from .storage import history_section

    with ReadOnlyHistory(state_dir / HISTORY_DB) as history:
        return history_section(state_dir, history)


def _history_dashboard(state_dir: Path, recent: int) -> dict[str, Any]:
    """No daemon runs here: the same document, from the event log alone (read only)."""
    require_history(state_dir)  # no daemon and no history: a wrong --state-dir, not a report
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


@click.command()
@click.option("--format", "fmt", default="prometheus", show_default=True,
              type=click.Choice(["prometheus", "json", "csv"]))
@state_dir_option
def metrics(state_dir: Path, fmt: str) -> None:
    """The daemon's metrics (Prometheus text by default); from history if none runs."""
    reply = ask_daemon(state_dir, {"cmd": "metrics", "format": fmt})
    if reply is not None:
        click.echo(reply["metrics"], nl=False)
        return
    require_history(state_dir)
    with _read_only_monitor(state_dir) as monitor:
        click.echo(monitor.export_metrics(format=fmt), nl=False)


COMMANDS = [status, metrics]
