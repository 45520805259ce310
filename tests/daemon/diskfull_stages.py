"""Stages for tests/daemon/test_run_disk_full.py (imported by worker processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.tinyfs import fill


class FillsTheDisk:
    """Fills the state directory's file system on its first execution, then returns a small
    value: the daemon's record of its completion finds the disk full."""

    def extract(self, context: Any) -> Any:
        marker = Path(context.state_dir) / "filled-once"
        if not marker.exists():
            marker.write_text("")
            fill(Path(context.state_dir) / "filler")
        return {"filled": True}


class Passes:
    def transform(self, context: Any) -> Any:
        return {"after": context.get_output("fill")}
