"""A state directory with real runs for the retention tests: a three-stage CSV pipeline whose
load fails until ``<state dir>/ok`` exists, run in this process against real SQLite and DuckDB,
and the collector of its master file's ``retain:`` at a time the test chooses."""

from __future__ import annotations

import os
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ahgd_daemon.collection import config_policy
from ahgd_daemon.removal import Collector
from ahgd_daemon.requests import request_run
from pipelines.config import load_config
from pipelines.config.configured import build_pipelines
from state import EventLog, utc_now

PIPELINE = "csvpipe"


def write_configs(tmp: Path, retain: str = "", *, pipeline_retain: str = "",
                  daemon: str = "") -> Path:
    """A master file (with ``retain: {<retain>}``, and ``daemon`` settings added to its
    ``daemon:`` such as ``object_store: {...}``) and its one pipeline file; the master."""
    (tmp / "csvpipe.yaml").write_text(textwrap.dedent(f"""\
        pipeline: {{name: {PIPELINE}}}
        duckdb: {{inline_tables: false}}   # outputs in files under data/, what retention removes
        triggers:
          - {{type: drop_folder, path: "${{state_dir}}/inbox/{PIPELINE}", pattern: "*.csv", stable_for: PT0.3S}}
        stages:
          - {{name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}}
          - {{name: transform, type: transformer, class: tests.daemon.stages.SlowTransformer, retry_attempts: 0}}
          - {{name: load, type: loader, class: tests.daemon.toggle_stages.FailUntilFlag, retry_attempts: 0}}
        """) + (f"retain: {{{pipeline_retain}}}\n" if pipeline_retain else ""))
    master = tmp / "master.yaml"
    master.write_text(textwrap.dedent(f"""\
        pipelines:
          - {{name: {PIPELINE}, config_file: csvpipe.yaml}}
        daemon: {{max_workers: 2, shutdown_grace: PT5S{", " + daemon if daemon else ""}}}
        """) + (f"retain: {{{retain}}}\n" if retain else ""))
    return master


class Kit:
    """The state directory of one master file, its pipelines and its event log."""

    def __init__(self, master: Path, state_dir: Path):
        self.master, self.state_dir = master, state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.loaded = load_config([master], state_dir=state_dir, import_classes=True)
        self.pipelines = build_pipelines(self.loaded, state_dir=state_dir)
        self.pipeline = self.pipelines[PIPELINE]
        self.pipeline._executor_arg = "inprocess"
        self.log = EventLog.open(state_dir)
        self.policy = config_policy(self.loaded)
        self._inputs = 0

    def close(self) -> None:
        self.log.close()

    def succeed(self, ok: bool) -> None:
        """Whether the load stage succeeds from now on."""
        flag = self.state_dir / "ok"
        flag.write_text("") if ok else flag.unlink(missing_ok=True)

    def run(self, rows: int = 3) -> str:
        """Request and execute one run of a new input (stored under inputs/); its run id."""
        self._inputs += 1
        src = self.state_dir.parent / f"input-{self._inputs}.csv"
        src.write_text("code,name\n" + "".join(f"{self._inputs}{n},row{n}\n" for n in range(rows)))
        fd = os.open(src, os.O_RDONLY)
        try:
            run_id = request_run(self.log, self.state_dir, self.pipelines, PIPELINE,
                                 input_fd=fd, input_name=src.name)
        finally:
            os.close(fd)
        self.pipeline.execute_run(run_id, log=self.log)
        return run_id

    def collector(self, after: timedelta = timedelta(0), **kw: Any) -> Collector:
        """The collector of the master file's policy, its clock ``after`` from now (``kw``:
        the collector's other settings, such as ``store``)."""
        return Collector(self.log, self.state_dir, self.policy, lambda: utc_now() + after, **kw)

    def run_row(self, run_id: str) -> Any:
        return self.log.run(run_id)

    def data_dirs(self) -> set[str]:
        root = self.state_dir / "data"
        return {p.name for p in root.iterdir()} if root.is_dir() else set()

    def input_dir(self, run_id: str) -> Path:
        return Path(self.log.run(run_id).params["input_file"]).parent

    def removals(self) -> list[tuple[str, str, str, str]]:
        """``(type, run_id, area, path)`` of every removal the log recorded, in order."""
        rows = self.log.query("SELECT type, run_id, area, path FROM removals ORDER BY seq")
        return [tuple(r) for r in rows]


def days(n: float) -> timedelta:
    return timedelta(days=n)


def at(n_days: float) -> datetime:
    return utc_now() + days(n_days)
