"""Pipelines for tests/pipelines/test_stage_outputs.py, importable by worker processes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pipelines import BasePipeline, StageConfig

RECORDS = [
    {"sa2_code": "101021007", "year": 2021, "deaths": 3, "rate": 1.2,
     "day": dt.date(2021, 6, 30)},
    {"sa2_code": "101021008", "year": 2021, "deaths": 5, "rate": 1.25,
     "day": dt.date(2021, 6, 30)},
    {"sa2_code": "101021009", "year": 2022, "deaths": None, "rate": 2,   # int in a float column
     "day": dt.date(2022, 6, 30), "note": "late"},                        # a key the others lack
]


class RecordsPipeline(BasePipeline):
    """``extract`` returns ``rows`` (records, a dict of columns, anything); ``use`` reads it
    back with ``get_output`` and with SQL, and returns what it found."""

    def __init__(self, name: str = "records", *, rows: Any, rules: dict | None = None, **kw: Any):
        kw.setdefault("max_retries", 0)
        if rules is not None:
            kw["stage_configs"] = {"extract": StageConfig("extract", validation_rules=rules)}
        super().__init__(name, **kw)
        self.rows = rows

    def define_stages(self) -> list[str]:
        return ["extract", "use"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "extract":
            return self.rows
        got = context.get_output("extract")
        ref = context.output_ref("extract")
        found: dict[str, Any] = {"python": type(got).__name__, "kind": ref["kind"]}
        if ref["kind"] == "tables":
            table = context.output_table("extract")
            found["sql"] = list(context.duckdb.execute(
                f"SELECT count(*), count(DISTINCT sa2_code) FROM {table}").fetchone())
            found["types"] = {r[0]: r[1] for r in context.duckdb.execute(
                f"DESCRIBE {table}").fetchall()}
        return found


class QuarantinePipeline(BasePipeline):
    """``extract`` makes rows with ``params["deciles"]``; ``validate`` copies them under
    ``quarantine: true``; ``use`` reports the shape of ``get_output("validate")``."""

    def __init__(self, name: str = "quarantine", **kw: Any):
        kw.setdefault("max_retries", 0)
        kw["stage_configs"] = {"validate": StageConfig("validate", validation_rules={
            "ranges": {"decile": [1, 10]}, "quarantine": True})}
        super().__init__(name, **kw)

    def define_stages(self) -> list[str]:
        return ["extract", "validate", "use"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "extract":
            return [{"sa2_code": f"10102100{i}", "decile": d}
                    for i, d in enumerate(context.params["deciles"])]
        if stage_name == "validate":
            return context.sql(f"SELECT * FROM {context.output_table('extract')}")
        got = context.get_output("validate")
        return {"python": type(got).__name__,
                "good": sorted(r[0] for r in got.fetchall()),
                "rejected": sorted(context.get_output("validate", table="validate_rejected")
                                   .fetchall())}
