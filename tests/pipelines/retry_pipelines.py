"""Stages that fail in chosen ways, for the retry rules (tests/pipelines/test_retry_rules.py).

Importable by worker processes.  Each attempt is counted in a file of the
state directory, so the count holds across worker processes; attempt ``n``
raises the ``n``-th error of its list (by kind, below), and once the list is
used up the stage succeeds with ``{"attempts": n}``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from pipelines import BasePipeline, RetryLater


def fail(kind: str, context: Any) -> None:
    """Raise the error called ``kind``, as a real stage would meet it."""
    if kind == "binder":  # DuckDB's BinderException: a column the query names does not exist
        context.sql("SELECT no_such_column FROM (SELECT 1 AS sa2_code)").fetchall()
    if kind == "oserror":
        raise OSError(errno.EIO, "Input/output error", "/mnt/share/seifa.csv")
    if kind == "filenotfound":
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/mnt/share/seifa.csv")
    if kind == "keyerror":
        raise KeyError("sa2_code")
    if kind == "retry_later":
        raise RetryLater("the ABS API answered 503", after=0.2)
    if kind == "retry_later_plain":
        raise RetryLater("the ABS API answered 503")
    if kind == "busy":  # a class of the author's own, named by a dotted path in retry_on
        from .retry_errors import Busy

        raise Busy("the ABS API is busy")
    if kind == "worker_dies":  # as a segfault or the OOM killer would end it
        os._exit(1)
    raise AssertionError(f"unknown failure kind {kind!r}")


def attempt_number(context: Any) -> int:
    """This attempt's number among all attempts of the stage in this state directory."""
    path = Path(context.state_dir) / f"tries-{context.pipeline_name}-{context.stage_name}"
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


class FailsThenWorks(BasePipeline):
    """One stage, ``work``, that raises ``failures[n-1]`` on its n-th attempt, then succeeds."""

    def __init__(self, name: str = "fails", *, failures: list[str], **kw: Any):
        super().__init__(name, **kw)
        self.failures = list(failures)

    def define_stages(self) -> list[str]:
        return ["work"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        n = attempt_number(context)
        if n <= len(self.failures):
            fail(self.failures[n - 1], context)
        return {"attempts": n}


class FailingExtractor:
    """The same as a YAML stage class: ``config: {failures: [keyerror, ...]}``."""

    def __init__(self, failures: list[str]):
        self.failures = failures

    def extract(self, context: Any) -> Any:
        n = attempt_number(context)
        if n <= len(self.failures):
            fail(self.failures[n - 1], context)
        return {"attempts": n}
