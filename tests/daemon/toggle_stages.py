"""Stage classes whose outcome a test switches from outside (imported by worker processes).

``FailUntilFlag`` fails until ``<state dir>/<flag>`` exists; ``FailFirstAttempts`` fails its
first ``n`` attempts of each run; ``Sleep`` takes its time (a daemon can be killed in the
middle).  Each works as any stage type (extract, transform, validate or load) and returns a
small value.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class _AnyType:
    def run(self, context: Any) -> Any:
        raise NotImplementedError

    def extract(self, context: Any) -> Any:
        return self.run(context)

    transform = validate = load = extract


class FailUntilFlag(_AnyType):
    def __init__(self, flag: str = "ok", sleep: float = 0.0):
        self.flag, self.sleep = flag, sleep

    def run(self, context: Any) -> Any:
        time.sleep(self.sleep)
        if not (Path(context.state_dir) / self.flag).exists():
            raise RuntimeError(f"{self.flag} is not there yet")
        return {"flag": self.flag}


class FailFirstAttempts(_AnyType):
    def __init__(self, n: int = 1):
        self.n = n

    def run(self, context: Any) -> Any:
        if context.attempt <= self.n:
            raise RuntimeError(f"attempt {context.attempt} fails on purpose")
        return context.passthrough(context.input_stage())


class Sleep(_AnyType):
    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds

    def run(self, context: Any) -> Any:
        time.sleep(self.seconds)
        return {"slept": self.seconds}


class RowsLoader:
    """Counts the rows of its input stage's table (read with SQL) and reports them as
    ``{"rows": n}``, as a loader that wrote them would."""

    def load(self, context: Any) -> Any:
        table = context.output_table(context.input_stage())
        return {"rows": context.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]}
