"""A pipeline for the worker-pool tests that counts how often it is pickled (in this process)."""

from __future__ import annotations

from typing import Any

from pipelines import BasePipeline


class CountsPickling(BasePipeline):
    """One stage; ``pickled`` counts the pickling of any instance in this process."""

    pickled = 0

    def define_stages(self) -> list[str]:
        return ["only"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return {"ok": True}

    def __getstate__(self) -> dict[str, Any]:
        type(self).pickled += 1
        return super().__getstate__()
