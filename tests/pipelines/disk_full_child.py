"""A child process for the disk-full run test: a two-stage pipeline whose first stage writes
a few MiB of DuckDB table to ``<state>/data``, a small tmpfs of its own (mounted by the test in
a private mount namespace) that is full when the run starts.  A thread frees the room once the
log records that the stage waits for it.

    python -m tests.pipelines.disk_full_child STATE_DIR        # prints the run's final state
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

from pipelines import BasePipeline, StageConfig
from tests.tinyfs import fill


class BigOutput(BasePipeline):
    def define_stages(self):
        return ["make", "count"]

    def execute_stage(self, stage_name, context):
        if stage_name == "make":
            return context.sql("SELECT range AS i, md5(range::VARCHAR) AS s FROM range(100000)")
        return context.sql(f"SELECT COUNT(*) AS n FROM {context.output_table('make')}")


def _free_when_waiting(state: Path, filler: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            con = sqlite3.connect(f"file:{state / 'history.db'}?mode=ro", uri=True)
            try:
                found = con.execute("SELECT 1 FROM events WHERE type = 'stage.retrying' AND "
                                    "json_extract(payload, '$.disk_full')").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            found = None
        if found:
            filler.unlink()
            return
        time.sleep(0.05)


def main(state: Path) -> None:
    filler = fill(state / "data" / "filler")
    threading.Thread(target=_free_when_waiting, args=(state, filler), daemon=True).start()
    pipeline = BigOutput("big", state_dir=state, stage_configs={
        "make": StageConfig("make", retry_attempts=0), "count": StageConfig("count")})
    context = pipeline.run()
    print(context.state, context.error)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
