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
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--no-import", is_flag=True, help="Do not import stage classes.")
@state_dir_option
def config_check(state_dir: Path, files: tuple[str, ...], no_import: bool) -> None:
    """Validate pipeline and master files; list every error, exit 1 if any."""
    from pipelines.config import check_files

    problems = check_files(list(files), state_dir=state_dir, import_classes=not no_import)
    for line in problems:
        click.echo(line, err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(files)} file(s) valid")


@config_group.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON Schema of pipeline and master files (for editors)."""
    from pipelines.config import config_schema

    click.echo(json.dumps(config_schema(), indent=2))


COMMANDS = [config_group]
