"""The configuration files turned into what the daemon acts on: pipelines and their triggers.

``load_setup`` reads the master and pipeline files (importing stage classes,
so a broken one is refused before the daemon starts or reloads) and builds
the pipelines, the drop folders and schedules of the enabled ones, which
pipelines an upstream completion starts, and which pipelines each one waits
for.  A pipeline with ``enabled: false`` is loaded with its triggers off: no
drop folder watched, no schedule, no upstream run; ``ahgd run`` refuses it,
saying so, unless given ``--force``.  The
daemon replaces the whole :class:`Setup` on a reload, never part of it, then
renews its worker processes and forgets the stage modules it imported itself
(``forget_stage_modules``): new attempts run the code on disk.
``start_triggers`` sets a setup's triggers going: the drop folders' watchers,
and the schedules' ticks missed while no daemon ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from state import EventLog

from .dropfolder import Folder
from .schedules import Schedule, build as build_schedule, catch_up


@dataclass
class Setup:
    """Everything derived from the configuration (replaced as a whole on reload)."""

    config: Any                                  # the loaded configuration files
    pipelines: dict[str, Any]                    # name -> ConfiguredPipeline, disabled ones too
    folders: list[Folder]
    schedules: list[Schedule]
    downstream_of: dict[str, list[str]]          # pipeline -> pipelines its completion starts
    dependencies: dict[str, list[str]]           # pipeline -> pipelines it waits for
    settings: Any                                # the master file's ``daemon:`` section
    folder_by_pipeline: dict[str, Folder] = field(default_factory=dict)  # each one's first
    disabled: dict[str, Path] = field(default_factory=dict)  # enabled: false -> its master file


def load_setup(config_paths: list[Path], state_dir: Path) -> Setup:
    from pipelines.config import load_config
    from pipelines.config.configured import ConfiguredPipeline

    config = load_config(config_paths, state_dir=state_dir, import_classes=True)
    setup = Setup(config, {}, [], [], {}, {}, config.daemon)
    for name, loaded in config.pipelines.items():
        setup.pipelines[name] = ConfiguredPipeline(loaded.file, state_dir=state_dir,
                                                   source=loaded.source)
        setup.dependencies[name] = list(loaded.dependencies)
        if not loaded.enabled:  # its triggers are off; its upstream triggers still order rebuilds
            setup.disabled[name] = loaded.master or loaded.source
        for trigger in loaded.file.triggers:
            if not loaded.enabled and trigger.type != "upstream":
                continue
            if trigger.type == "drop_folder":
                folder = _folder(name, trigger, loaded.file.stages)
                setup.folders.append(folder)
                setup.folder_by_pipeline.setdefault(name, folder)
            elif trigger.type == "schedule":
                setup.schedules.append(build_schedule(name, trigger))
            elif trigger.type == "upstream":
                for upstream in trigger.pipelines:
                    setup.downstream_of.setdefault(upstream, []).append(name)
    return setup


def _folder(pipeline: str, trigger: Any, stages: Any = ()) -> Folder:
    """The drop folder of a ``{type: drop_folder, ...}`` trigger (``stages``: its pipeline's,
    for an ``input_check.stage``)."""
    check = trigger.input_check
    spec = next((s for s in stages if check and s.name == check.stage), None)
    return Folder(
        pipeline=pipeline, path=Path(trigger.path), pattern=trigger.pattern,
        recursive=trigger.recursive, stable_for=trigger.stable_for.total_seconds(),
        observer=trigger.observer, poll_interval=trigger.poll_interval.total_seconds(),
        allow_duplicates=trigger.allow_duplicates,
        quarantine_on_extract_failure=trigger.quarantine_on_extract_failure,
        required_columns=list(check.required_columns) if check else [],
        encoding=(check.encoding if check and check.encoding else "utf-8"),
        delimiter=(check.delimiter if check and check.delimiter else ","),
        check_callable=_checked_callable(pipeline, check),
        check_stage=({"name": spec.name, "class": spec.class_, "config": dict(spec.config)}
                     if spec is not None else None),
        check_timeout=check.timeout.total_seconds() if check else 60.0)


def _checked_callable(pipeline: str, check: Any) -> str | None:
    """The dotted path of an ``input_check.callable``.  ``load_config`` has imported it in a
    fresh interpreter (a broken one stops a start or a reload), never in the daemon, whose
    ``sys.modules`` remembers modules as they were; it is called in a child process
    (ahgd_daemon.inputcheck)."""
    if check is None or not check.callable:
        return None
    return check.callable


def forget_stage_modules(*setups: Setup | None) -> list[str]:
    """Drop the modules of the setups' stage classes and input checks from this process's
    ``sys.modules`` (ahgd's own packages excepted); the names dropped.

    Stages run in worker processes, which a reload replaces; a stage with ``executor:
    inprocess`` runs in the daemon itself, whose ``sys.modules`` would otherwise keep the
    module as it was first imported.  A module dropped is imported from disk next time.
    """
    import sys

    names: set[str] = set()
    for setup in setups:
        for loaded in (setup.config.pipelines.values() if setup is not None else ()):
            dotted = [stage.class_ for stage in loaded.file.stages]
            dotted += [getattr(getattr(t, "input_check", None), "callable", None)
                       for t in loaded.file.triggers]
            names.update(d.rpartition(".")[0] for d in dotted if d)
    dropped = sorted(n for n in names if n in sys.modules
                     and n.partition(".")[0] not in ("state", "pipelines", "ahgd_daemon"))
    for name in dropped:
        del sys.modules[name]
    return dropped


def start_triggers(setup: Setup, log: EventLog, intake: Any, now: datetime, logger: Any) -> Any:
    """Set the triggers of ``setup`` going; return the drop folders' watchers.

    Watches the drop folders (the files already waiting there are reported to
    ``intake`` as candidates) and fires the schedules' ticks missed while no
    daemon ran, by each trigger's misfire policy.
    """
    from .watch import Watchers

    watchers = Watchers(setup.folders, complete=intake.complete, candidate=intake.candidate,
                        logger=logger)
    try:
        watchers.start()
        found = watchers.scan()
        if found:
            logger.info("files_waiting", count=found)
        for schedule in setup.schedules:
            fired = catch_up(log, schedule, now)
            if fired:
                logger.info("missed_ticks_fired", pipeline=schedule.pipeline,
                            trigger=schedule.trigger_id, policy=schedule.misfire, runs=fired)
    except BaseException:
        watchers.stop()  # no observer left running behind a failed start
        raise
    return watchers
