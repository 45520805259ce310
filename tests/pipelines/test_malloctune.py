"""A process running DuckDB attempts keeps its heap between statements (pipelines.malloctune).

glibc gave the top of its heap back after every statement, so binding a small
``read_csv`` faulted ~840 pages in again each time (1.4 ms of the kernel's CPU
of 2.2).  Counted here in minor page faults, not time: a fault count does not
move with the machine's load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines import malloctune
from pipelines.base import BasePipeline

from .sample_pipelines import output_in_a_fresh_worker

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

BINDS = 30


def _minor_faults() -> int:
    stat = Path("/proc/self/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[7])


class SniffPipeline(BasePipeline):
    """One stage binding ``read_csv`` of a small file ``BINDS`` times (each sniffs it)."""

    def __init__(self, csv: str, **kw: Any):
        kw.setdefault("max_retries", 0)
        super().__init__("sniff", **kw)
        self.csv = csv

    def define_stages(self) -> list[str]:
        return ["sniff"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        bind = "SELECT * FROM read_csv(?, header = true)"
        context.sql(bind, [self.csv])  # the first one pays for what stays allocated
        before = _minor_faults()
        for _ in range(BINDS):
            context.sql(bind, [self.csv])
        return {"faults_per_bind": (_minor_faults() - before) / BINDS,
                "malloc": malloctune.outcome}


@pytest.fixture
def small_csv(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("id,value,label\n" + "".join(f"{i},{i * 1.5},l{i}\n" for i in range(20)))
    return str(path)


def _sniff_in_a_worker(state_dir: Path, csv: str) -> dict:
    return output_in_a_fresh_worker(SniffPipeline(csv, state_dir=state_dir), "sniff")


def test_a_worker_keeps_its_heap_between_duckdb_statements(state_dir, small_csv, monkeypatch):
    for name in ("AHGD_MALLOC_TUNE", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    tuned = _sniff_in_a_worker(state_dir, small_csv)
    assert tuned["malloc"] == "tuned"
    assert tuned["faults_per_bind"] < 100, tuned

    # the same worker code with the tuning turned off faults the sniffer's pages in each time
    monkeypatch.setenv("AHGD_MALLOC_TUNE", "0")
    untuned = _sniff_in_a_worker(state_dir, small_csv)
    assert untuned["malloc"] == "off (AHGD_MALLOC_TUNE)"
    assert untuned["faults_per_bind"] > 4 * max(tuned["faults_per_bind"], 50), (tuned, untuned)


@pytest.mark.parametrize("env, expected", [
    ({"MALLOC_TRIM_THRESHOLD_": "1048576"}, "left as set by MALLOC_TRIM_THRESHOLD_"),
    ({"MALLOC_MMAP_THRESHOLD_": "1048576"}, "left as set by MALLOC_MMAP_THRESHOLD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}, "left as set by GLIBC_TUNABLES"),
    ({"AHGD_MALLOC_TUNE": "off"}, "off (AHGD_MALLOC_TUNE)"),
    ({"GLIBC_TUNABLES": "glibc.malloc.top_pad=0"}, "left as set by GLIBC_TUNABLES"),
    ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"}, "tuned"),  # not about malloc
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "tuned"),  # not the thresholds
])
def test_a_users_own_malloc_settings_are_left_alone(env, expected):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("AHGD_MALLOC_TUNE", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                          "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    code = ("from pipelines import attemptdb, malloctune; "
            "instance = attemptdb.warm_instances(); "  # nothing made yet: not tuned
            "assert malloctune.outcome is None, malloctune.outcome; "
            "attemptdb._Instance(('t',), {}); print(malloctune.outcome); "
            "print(malloctune.tune())")
    out = subprocess.run([sys.executable, "-P", "-c", code], env={**clean, **env},
                         cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    assert out == [expected, expected]  # decided once, by the first instance
