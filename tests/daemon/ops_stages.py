"""Stage classes for the day-to-day operations tests (``test_operations.py``): they log with
``context.log``, print to stdout and stderr, use ``context.params``, and fail on demand."""

from __future__ import annotations

import sys
import time
from typing import Any


class Extract:
    """The dropped CSV (or, without one, ``rows`` generated rows), with the run's params."""

    def extract(self, context: Any) -> Any:
        context.log.info("extract_params", region=context.params.get("region"),
                         year=context.params.get("year"))
        print(f"printed by extract: region={context.params.get('region')}", flush=True)
        print("warned on stderr by extract", file=sys.stderr, flush=True)
        time.sleep(float(context.params.get("sleep") or 0))
        if context.params.get("explode"):
            raise RuntimeError("exploded on request (param explode)")
        if context.input_file is not None:
            return context.sql("SELECT * FROM read_csv(?, header = true, all_varchar = true)",
                               [str(context.input_file)])
        return context.sql("SELECT range AS i, ? AS region, ? AS year FROM range(5)",
                           [context.params.get("region"), context.params.get("year")])


class Load:
    """Writes the extract's rows to the warehouse table ``loaded``."""

    def load(self, context: Any) -> Any:
        table = context.output_table("extract")
        with context.warehouse() as con:
            con.execute(f"CREATE OR REPLACE TABLE loaded AS SELECT * FROM {table}")
            n = con.execute("SELECT COUNT(*) FROM loaded").fetchone()[0]
        return {"rows": n}
