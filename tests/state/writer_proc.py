"""A child process for the concurrency and crash tests: appends run lifecycles.

    python -m tests.state.writer_proc DB PREFIX COUNT

Prints ``ok <seq>`` (flushed) after every append that returned, so that the
parent knows which events must survive a SIGKILL.
"""

import sys

from state import EventLog, EventType as T, new_event


def lifecycle(run_id: str):
    yield new_event(T.RUN_REQUESTED, run_id, pipeline="p", trigger="manual")
    yield new_event(T.RUN_STARTED, run_id, stages=["extract", "load"])
    for stage in ("extract", "load"):
        yield new_event(T.STAGE_STARTED, run_id, stage=stage, attempt=1)
        yield new_event(T.STAGE_COMPLETED, run_id, stage=stage, attempt=1, rows=5)
    yield new_event(T.RUN_COMPLETED, run_id)


def main() -> None:
    db, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = EventLog(db)
    out = sys.stdout
    for i in range(count):
        for e in lifecycle(f"{prefix}-{i}"):
            stored = log.append(e)
            out.write(f"ok {stored.seq}\n")
            out.flush()
    log.close()


if __name__ == "__main__":
    main()
