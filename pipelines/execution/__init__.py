"""Running a pipeline's stages: the run engine, the executors, the worker processes.

    engine      RunEngine: one run through the event log (start, attempts, retries, end)
    runner      one attempt: build the context, call the stage, store and validate its output
    outputs     storing what a stage returned (tables, records, values) and checking its rules
    executors   the Executor boundary (slots, submit, cancel) and the in-process executor
    pool        ProcessExecutor: the warm pool of worker processes (the default)
    worker      the worker process's main (``python -P -m pipelines.execution.worker``)
    children    how a Python child is started: ahgd's packages first, the working directory last
    logsetup    structlog set-up shared by the daemon and its workers

Nothing is imported here: a worker process imports only what it uses.
"""
