"""An exception class of a pipeline author's own, for ``retry_on`` by dotted path: imported
only where a stage raises it or where an error is judged (the worker), never by the process
that runs the pipeline's engine (tests/pipelines/test_retry_rules.py)."""


class Busy(Exception):
    pass
