"""The daemon stays light (issue 18): DuckDB is never loaded into the daemon process on the
bundled configuration, not at start-up, not for input checks, runs or the warehouse's look;
and ``ahgd --help`` imports no command module.  (The figures: ``bench/footprint.py``.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .harness import REPO, Daemon, env, query, wait_until

MASTER = REPO / "pipelines" / "ahgd" / "config" / "master.yaml"
DATA = REPO / "pipelines" / "ahgd" / "data"


def _mapped(pid: int) -> list[str]:
    """The heavy libraries mapped into process ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [lib for lib in ("_duckdb", "libarrow", "fastexcel") if lib in maps]


def test_the_daemon_on_the_bundled_configuration_never_loads_duckdb(tmp_path: Path):
    state_dir = tmp_path / "state"
    daemon = Daemon(MASTER, state_dir).wait_ready(30)
    try:
        assert _mapped(daemon.proc.pid) == [], "after loading the configuration"
        inbox = state_dir / "inbox" / "seifa_sa2"
        shutil.copyfile(DATA / "seifa_2021_sa2.csv", tmp_path / "seifa.csv")
        os.rename(tmp_path / "seifa.csv", inbox / "seifa.csv")   # input check, then a run
        (tmp_path / "bad.csv").write_text("not,the,seifa,header\n1,2,3,4\n")
        os.rename(tmp_path / "bad.csv", inbox / "bad.csv")        # input check, quarantined
        # the SEIFA run completes; the profile it starts fails (no mortality data yet)
        wait_until(lambda: dict(query(state_dir, "SELECT pipeline, state FROM runs")) == {
            "seifa_sa2": "COMPLETED", "sa2_health_profile": "FAILED"}
            and (state_dir / "quarantine" / "seifa_sa2" / "bad.csv").exists(),
            60, "the runs to end and the bad file to be quarantined")
        (state_dir / "warehouse.duckdb").unlink()   # the daemon's next look finds it lost
        wait_until(lambda: query(state_dir, "SELECT seq FROM events WHERE type = 'warehouse.lost'"),
                   20, "the daemon to find the warehouse lost")
        assert _mapped(daemon.proc.pid) == [], "after an input check, a run and a look at the warehouse"
    finally:
        daemon.stop()


def test_importing_the_command_line_imports_no_command_module():
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from ahgd_daemon.cli import main\n"
            "listing = CliRunner().invoke(main, ['--help']).output\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('state', 'pipelines', 'ahgd_daemon')))\n"
            "typo = CliRunner().invoke(main, ['histroy']).output\n"
            "print(listing)\n"
            "print(typo)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=env(), timeout=60, check=True).stdout
    loaded, _, rest = out.partition("\n")
    assert loaded == "['ahgd_daemon', 'ahgd_daemon.cli']"
    for name in ("backfill", "config", "daemon", "demo", "gc", "history", "quarantine", "warehouse"):
        assert f"\n  {name} " in rest
    assert "  history     Recent runs, newest first" in rest
    assert "No such command 'histroy'. Did you mean 'history'?" in rest


def test_the_table_of_lazy_commands_matches_the_commands():
    import click
    from click.utils import _make_default_short_help as make_default_short_help

    from ahgd_daemon import cli

    for name, (module, attr, first) in cli.LAZY_COMMANDS.items():
        command = cli.main.get_command(click.Context(cli.main), name)
        assert command is getattr(__import__(f"ahgd_daemon.{module}", fromlist=[attr]), attr)
        assert command.name == name and not command.hidden and command.short_help is None
        for limit in range(20, 120):
            assert make_default_short_help(first, limit) == make_default_short_help(
                command.help, limit), (name, limit)
    registered = {c.name for p in (REPO / "ahgd_daemon").glob("cli_*.py")
                  for c in getattr(__import__(f"ahgd_daemon.{p.stem}", fromlist=["_"]),
                                   "COMMANDS", [])}
    assert registered == set(cli.LAZY_COMMANDS)
