"""Running a pipeline's stages: the run engine, the executors, the worker processes.

    engine      RunEngine: one run through the event log (start, attempts, retries, end)
    runner      one attempt: build the context, call the stage, store and validate its output
    executors   the Executor boundary (slots, submit, cancel) and the in-process executor
    pool        ProcessExecutor: the warm pool of worker processes (the default)
    worker      the worker process's main (``python -m pipelines.execution.worker``)
    logsetup    structlog set-up shared by the daemon and its workers

Nothing is imported here: a worker process imports only what it uses.
"""
