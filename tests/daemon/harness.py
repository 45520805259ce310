"""Run the real daemon as a subprocess on temp directories, and read what it did."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]


def ahgd_exe() -> list[str]:
    exe = Path(sys.executable).with_name("ahgd")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ahgd_daemon"]


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("AHGD_STATE_DIR", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra or {})
    return e


def write_config(tmp: Path, *, extract: dict | None = None, transform: dict | None = None,
                 load: dict | None = None, trigger: str = "", daemon: str = "",
                 stable_for: str = "PT0.3S", extra_triggers: str = "", name: str = "csvpipe") -> Path:
    """A master file with one three-stage pipeline watching ``${state_dir}/inbox/<name>``."""
    def cfg(d: dict | None) -> str:
        return json.dumps(d or {})

    pipeline = tmp / f"{name}.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        pipeline: {{name: {name}}}
        triggers:
          - {{type: drop_folder, path: "${{state_dir}}/inbox/{name}", pattern: "*.csv", stable_for: {stable_for}{trigger}}}
        {extra_triggers}
        stages:
          - {{name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, config: {cfg(extract)}, retry_attempts: 0}}
          - {{name: transform, type: transformer, class: tests.daemon.stages.SlowTransformer, config: {cfg(transform)}, retry_attempts: 0}}
          - {{name: load, type: loader, class: tests.daemon.stages.CountLoader, config: {cfg(load)}, retry_attempts: 0}}
        """))
    master = tmp / "master.yaml"
    master.write_text(textwrap.dedent(f"""\
        pipelines:
          - {{name: {name}, config_file: {pipeline.name}}}
        daemon: {{max_workers: 2, shutdown_grace: PT5S{daemon}}}
        """))
    return master


class Daemon:
    """The real `ahgd daemon`, started as a subprocess, its JSON log in a file."""

    def __init__(self, config: Path, state_dir: Path, *, once: bool = False,
                 extra_env: dict[str, str] | None = None, args: list[str] | None = None):
        self.config, self.state_dir = config, state_dir
        self.log_path = state_dir.parent / f"daemon-{time.time_ns()}.log"
        cmd = [*ahgd_exe(), "daemon", "--config", str(config), "--state-dir", str(state_dir),
               "--json-logs", *(args or [])]
        if once:
            cmd.append("--once")
        self._out = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     env=env(extra_env), cwd=REPO)

    def wait_ready(self, timeout: float = 30) -> "Daemon":
        wait_until(lambda: any(r.get("event") == "daemon_ready" for r in self.records())
                   or self.proc.poll() is not None, timeout, "the daemon to become ready")
        assert self.proc.poll() is None, self.output()
        return self

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log_path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._out.close()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        return code

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        self._out.close()
        return code


def write_rejecting_pipeline(tmp: Path, name: str) -> Path:
    """``<tmp>/<name>.yaml``: a drop folder ``${state_dir}/inbox/<name>`` whose files are
    extracted, validated (rows whose ``a`` is not ``ok`` set aside) and loaded row by row."""
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        pipeline: {{name: {name}}}
        triggers:
          - {{type: drop_folder, path: "${{state_dir}}/inbox/{name}", pattern: "*.csv", stable_for: PT0.2S}}
        stages:
          - {{name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}}
          - name: transform
            type: transformer
            class: tests.daemon.stages.SlowTransformer
            retry_attempts: 0
            validation_rules: {{allowed_values: {{a: [ok]}}, quarantine: true}}
          - {{name: load, type: loader, class: tests.daemon.toggle_stages.RowsLoader, retry_attempts: 0}}
        """))
    return path


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def query(state_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    db = state_dir / "history.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def traces(state_dir: Path) -> list[dict[str, Any]]:
    p = state_dir / "trace" / "executions.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def drop_csv(folder: Path, name: str, rows: int = 3, *, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.part"
    tmp.write_text("a,b\n" + "".join(f"{seed},{i}\n" for i in range(rows)))
    final = folder / name
    tmp.rename(final)
    return final
