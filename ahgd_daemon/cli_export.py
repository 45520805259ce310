"""``ahgd export TABLE --format parquet|csv --to PATH``: a warehouse table (or, with ``--run``
and ``--stage``, a table of one stage's output: its rows, or its rejected rows) to a file.

Reads only (the warehouse and the history, read-only); no daemon is needed.
The work is :mod:`ahgd_daemon.exports`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli_common import check_name, fail, require_history, state_dir_option


@click.command("export")
@click.argument("table")
@click.option("--format", "fmt", default=None, metavar="parquet|csv",
              help="The file's format (default: from the --to file's extension, else parquet).")
@click.option("--to", "target", required=True, type=click.Path(path_type=Path),
              help="The file to write (replaced if it exists).")
@click.option("--run", "run_id", default=None, help="Export from this run's stage output "
              "instead of the warehouse (with --stage).")
@click.option("--stage", "-s", default=None, help="The stage whose output to export (with "
              "--run); TABLE is one of its tables, such as output or <stage>_rejected.")
@click.option("--json", "as_json", is_flag=True, help="What was written, as JSON.")
@state_dir_option
def export_cmd(state_dir: Path, table: str, fmt: str | None, target: Path, run_id: str | None,
               stage: str | None, as_json: bool) -> None:
    """Copy a table to a Parquet or CSV file, streaming (a table larger than memory exports)."""
    from .exports import FORMATS, export, stage_output_file, warehouse_file

    if fmt is None:
        fmt = target.suffix.lstrip(".").lower() if target.suffix.lstrip(".").lower() in FORMATS \
            else "parquet"
    fmt = fmt.lower()
    if fmt not in FORMATS:
        fail(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if (run_id is None) != (stage is None):
        fail("--run and --stage go together: --run RUN_ID --stage STAGE exports a table of that "
             "stage's output; without both, TABLE is a warehouse table")
    if run_id is not None:
        from state import ops_queries
        from state.db import ReadOnlyHistory

        from .names import unknown_run

        with ReadOnlyHistory(require_history(state_dir)) as history:
            check_name(unknown_run(history, run_id))
            run = ops_queries.run_in_full(history, run_id)
        source = stage_output_file(state_dir, run, stage)  # type: ignore[arg-type]
        what = f"the output of stage {stage!r} of run {run_id}"
    else:
        source = warehouse_file(state_dir)
        what = f"the warehouse {source}"
    out = export(source, table, fmt, target, what=what)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"exported {out['table']}: {out['rows']:,} rows to {out['to']} ({out['format']}, "
               f"{out['bytes']:,} bytes)")


COMMANDS = [export_cmd]
