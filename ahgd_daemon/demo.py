"""`ahgd demo`: the daemon on the bundled AHGD pipelines and real data, end to end.

Copies the bundled ABS SEIFA and AIHW MORT files into the drop folders of a
local state directory, runs the real daemon loop with ``--once`` (it takes
the files, runs seifa_sa2 and mortality_regions, then sa2_health_profile
after both), shows progress while it works, and prints the run history and a
few rows of the ``sa2_health_profile`` table.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

import click

import pipelines.ahgd as bundled

BUNDLED = Path(bundled.__file__).resolve().parent
MASTER = BUNDLED / "config" / "master.yaml"
INPUTS = {"seifa_sa2": "seifa_2021_sa2.csv", "mortality_regions": "aihw_mort_table1.csv"}


def drop_inputs(state_dir: Path) -> list[Path]:
    """Place the bundled files in the drop folders the way a user would (write, rename)."""
    placed = []
    for pipeline, name in INPUTS.items():
        inbox = state_dir / "inbox" / pipeline
        inbox.mkdir(parents=True, exist_ok=True)
        part = inbox / f"{name}.part"
        shutil.copyfile(BUNDLED / "data" / name, part)
        part.rename(inbox / name)
        placed.append(inbox / name)
    return placed


class Progress:
    """A compact live view of the daemon's work: one line, redrawn, on a terminal."""

    def __init__(self, out: TextIO):
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def __call__(self, snap: dict[str, Any]) -> None:
        active = ", ".join(f"{a['pipeline']}:{a['stage'] or 'starting'}" for a in snap["active"]) or "-"
        counts = snap["counts"]
        line = (f"running [{active}]  completed {counts.get('COMPLETED', 0)}  "
                f"failed {counts.get('FAILED', 0)}  files waiting {snap['files_waiting']}")
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.out.write("\r\033[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()


def profile_rows(state_dir: Path, limit: int = 5) -> tuple[list[str], list[tuple]]:
    import duckdb

    path = state_dir / "warehouse.duckdb"
    if not path.exists():
        return [], []
    con = duckdb.connect(str(path), read_only=True)
    try:
        rel = con.sql(
            "SELECT sa2_code, sa2_name, state_abbr AS state, sa3_name, irsd_score AS irsd, "
            "irsd_decile AS decile, round(population_density_per_sqkm, 1) AS per_km2, "
            "sa3_age_standardised_rate_per_100000 AS sa3_mort_asr, "
            "sa3_premature_deaths_asr_per_100000 AS sa3_premature_asr, "
            "sa3_potentially_avoidable_deaths AS sa3_avoidable "
            f"FROM sa2_health_profile ORDER BY sa2_code LIMIT {int(limit)}")
        return rel.columns, rel.fetchall()
    finally:
        con.close()


def file_outcomes(log: Any, after: int) -> list[str]:
    """One line per file the daemon took after event ``after``: run, duplicate or quarantine.

    A second ``ahgd demo`` finds the same bytes again; without this it would only show
    the first demo's runs, and the files it dropped would seem to have done nothing.
    """
    from state.events import EventType as T

    lines = []
    for e in log.events(after=after, types=[T.FILE_ARRIVED, T.FILE_DUPLICATE,
                                            T.FILE_QUARANTINED]):
        name, p = e.payload.get("name", "?"), e.payload
        if e.type == T.FILE_ARRIVED:
            lines.append(f"{name}: new, run {e.run_id}")
        elif e.type == T.FILE_DUPLICATE:
            lines.append(f"{name}: the same bytes as run {p.get('first_run_id', e.run_id)}'s "
                         f"file, so nothing ran again (kept in {p.get('moved_to')})")
        else:
            lines.append(f"{name}: quarantined: {p.get('reason', '?')}")
    return lines


def run_demo(state_dir: Path, out: TextIO = sys.stdout, master: Path = MASTER) -> int:
    from state import EventLog, queries
    from state.statedir import ensure_state_dir

    from . import logs
    from .daemon import Daemon, DaemonOptions
    from .tables import render_table

    ensure_state_dir(state_dir)
    log_file = state_dir / "demo-daemon.log"
    stream = open(log_file, "a")
    logs.configure(json_lines=True, stream=stream)
    click.echo(f"state directory: {state_dir}", file=out)
    click.echo(f"dropping the bundled ABS SEIFA and AIHW MORT files into {state_dir / 'inbox'}", file=out)
    drop_inputs(state_dir)
    click.echo(f"running the daemon once on {master} (JSON log: {log_file})", file=out)
    with EventLog.open(state_dir) as log:
        before = log.last_seq()
    progress = Progress(out)
    try:
        code = Daemon(DaemonOptions(config_paths=[master], state_dir=state_dir, once=True,
                                    progress=progress, install_signals=True,
                                    worker_output=stream)).run()
    finally:
        progress.done()
        stream.close()
    columns = ["run_id", "pipeline", "trigger", "state", "duration_s", "error"]
    with EventLog.open(state_dir) as log:
        runs = queries.run_history(log, columns=columns)
        outcomes = file_outcomes(log, before)
    if outcomes:
        click.echo("\nwhat became of the dropped files:", file=out)
        for line in outcomes:
            click.echo(f"  {line}", file=out)
    click.echo("\nrun history (SELECT * FROM run_history):", file=out)
    click.echo(render_table(runs, columns), file=out)
    profile_columns, profile = profile_rows(state_dir)
    if profile:
        click.echo("\nsa2_health_profile, first rows (warehouse.duckdb):", file=out)
        click.echo(render_table([dict(zip(profile_columns, row)) for row in profile],
                                profile_columns, max_width=26), file=out)
    click.echo(f"\nquery it yourself: sqlite3 {state_dir / 'history.db'} 'SELECT * FROM run_history'",
               file=out)
    click.echo(f"                   python -c \"import duckdb; print(duckdb.connect("
               f"'{state_dir / 'warehouse.duckdb'}', read_only=True).sql("
               "'SELECT * FROM sa2_health_profile LIMIT 5'))\"", file=out)
    click.echo(f"runs, alerts, the machine:  ahgd status --state-dir {state_dir}", file=out)
    click.echo(f"the same as a web page:     ahgd daemon --config {master} --state-dir "
               f"{state_dir} --http 127.0.0.1:8787   (then open http://127.0.0.1:8787/)",
               file=out)
    return code
