"""Pipelines for the worker-pool tests: one whose unpickling fails while a marker file exists."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines import BasePipeline


class LoadsOnlyWithoutMarker(BasePipeline):
    """One stage, reporting its worker's pid; a worker cannot load it while ``marker`` exists
    (as when its module is broken or not yet deployed)."""

    def __init__(self, name: str, marker: Path, **kw: Any):
        super().__init__(name, **kw)
        self.marker = str(marker)

    def define_stages(self) -> list[str]:
        return ["only"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return {"pid": os.getpid(), "pipeline": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if os.path.exists(state["marker"]):
            raise ImportError(f"cannot load this pipeline while {state['marker']} exists")
        super().__setstate__(state)
