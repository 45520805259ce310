"""``ahgd config check|schema``: validate configuration files, print their JSON Schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_common import state_dir_option


@click.group("config")
def config_group() -> None:
    """Check configuration files, or print their JSON Schema."""


@config_group.command("check")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-c", "--config", "configs", multiple=True, type=click.Path(dir_okay=False),
              help="A file to check, as the other commands name it (repeatable; the same as "
                   "naming it without -c).")
@click.option("--no-import", is_flag=True, help="Do not import stage classes.")
@state_dir_option
def config_check(state_dir: Path, files: tuple[str, ...], configs: tuple[str, ...],
                 no_import: bool) -> None:
    """Validate pipeline and master files (and the pipeline files a master file lists); list
    every problem of every file at once, exit 1 if there is any.

    Stage classes and input_check callables are imported in a fresh interpreter, as a
    worker process will import them.
    """
    from pipelines.config import check_config

    files = (*configs, *files)
    if not files:
        raise click.UsageError("name the files to check: ahgd config check master.yaml "
                               "(or -c master.yaml, as `ahgd daemon` takes it)")

    found = check_config(list(files), state_dir=state_dir, import_classes=not no_import)
    listing = "".join(f"\n  {name}" for name in found.files)
    for line in found.problems:
        click.echo(line, err=True)
    if found.problems:
        click.echo(f"{len(found.problems)} problem(s) found in {len(found.files)} file(s) "
                   f"checked:{listing}", err=True)
        sys.exit(1)
    imported = " (not importing stage classes)" if no_import else ""
    click.echo(f"ok: {len(found.files)} file(s) valid{imported}:{listing}")


@config_group.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON Schema of pipeline and master files (for editors)."""
    from pipelines.config import config_schema

    click.echo(json.dumps(config_schema(), indent=2))


COMMANDS = [config_group]
