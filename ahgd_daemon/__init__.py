"""ahgd's top layer: the ``ahgd`` command line and the daemon (drop folders, schedules,
recovery, the control socket, the status server).  Imports ``pipelines`` and ``state``;
nothing imports it."""
