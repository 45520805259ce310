"""Load pipeline and master YAML files into validated models, reporting every problem.

    cfg = load_config([Path("conf/master.yaml")], state_dir=state_dir)
    for name, p in cfg.pipelines.items():
        p.file.stages, p.dependencies, p.priority

Problems are collected, not raised one at a time: a :class:`ConfigError` lists
each as ``<file>:<line>: <key path>: <message>`` and carries them as
``exc.issues`` (:class:`ConfigIssue`).  The models are in
:mod:`pipelines.config.models`, the YAML reading and ``${...}`` expansion in
:mod:`pipelines.config.source`; this module runs a load and checks what spans
several keys or files: the stage graph, dependencies, names, upstream triggers
and imports.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from state.errors import did_you_mean

from ..errors import ConfigError
from ..graph import find_cycle
from ..retries import retry_key_names
from .models import (DaemonSettings, MasterEntry, MasterFile, MasterOrchestration, PipelineFile,
                     ResourceRequirements)
from .problems import ConfigIssue, pydantic_problems
from .retain import RetainSettings
from .source import Doc, Substitutions, expand, file_kind, format_path, read_yaml
from .imports import IMPORT, check_names, named_imports


@dataclass(frozen=True)
class LoadedPipeline:
    """A pipeline with the values of its master entry (defaults when given directly)."""

    name: str
    file: PipelineFile
    source: Path
    master: Path | None = None
    dependencies: list[str] = field(default_factory=list)
    priority: int = 0
    enabled: bool = True
    timeout: timedelta | None = None
    resource_requirements: ResourceRequirements | None = None
    retry_policy: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedConfig:
    """Everything ``load_config`` read: pipelines by name and the merged settings."""

    pipelines: dict[str, LoadedPipeline]
    orchestration: MasterOrchestration
    daemon: DaemonSettings
    files: list[Path]
    read: list[str] = field(default_factory=list)   # every file read, as shown in messages
    retain: RetainSettings = field(default_factory=RetainSettings)  # the master files' retain:


def load_pipeline_file(path: str | os.PathLike, *, state_dir: str | os.PathLike | None = None,
                       import_classes: bool = False,
                       env: Mapping[str, str] | None = None) -> PipelineFile:
    """Load one pipeline file; raise ConfigError listing every problem."""
    session = _Session(state_dir, env, import_classes)
    session.load(Path(path), expect="pipeline")
    session.raise_issues()
    return session.records[0].file


def load_master_file(path: str | os.PathLike, *, state_dir: str | os.PathLike | None = None,
                     import_classes: bool = False,
                     env: Mapping[str, str] | None = None) -> MasterFile:
    """Load a master file and each pipeline file it lists (``.pipeline_files``)."""
    session = _Session(state_dir, env, import_classes)
    session.load(Path(path), expect="master")
    session.check_across()
    session.raise_issues()
    return session.masters[0]


def load_config(paths: Iterable[str | os.PathLike], *,
                state_dir: str | os.PathLike | None = None, import_classes: bool = False,
                env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load master and pipeline files (told apart by their top-level keys) as one config.

    Dependencies and upstream triggers may name pipelines from any of the files.
    ``orchestration`` and ``daemon`` merge the master files' settings key by key;
    a key set to different values in two master files is an error.
    """
    session = _Session(state_dir, env, import_classes)
    files = [Path(p) for p in paths]
    for path in files:
        session.load(path, expect=None)
    session.check_across()
    orchestration, daemon, retain = session.merged_settings()
    session.raise_issues()
    pipelines = {}
    for rec in session.unique_records():
        entry = rec.entry or MasterEntry.model_construct(name=rec.name, config_file=rec.source)
        pipelines[rec.name] = LoadedPipeline(
            name=rec.name, file=rec.file, source=rec.source,
            master=rec.doc.path if rec.entry else None,
            dependencies=list(entry.dependencies), priority=entry.priority,
            enabled=entry.enabled, timeout=entry.timeout,
            resource_requirements=entry.resource_requirements,
            retry_policy=dict(entry.retry_policy))
    return LoadedConfig(pipelines=pipelines, orchestration=orchestration, daemon=daemon,
                        files=[Path(os.path.abspath(p)) for p in files],
                        read=session.files_read(), retain=retain)


@dataclass(frozen=True)
class ConfigCheck:
    """What ``ahgd config check`` found: every problem, and every file it read to find them."""

    problems: list[str]
    files: list[str]     # the files given and the pipeline files their master files list


def check_config(paths: Iterable[str | os.PathLike], *,
                 state_dir: str | os.PathLike | None = None, import_classes: bool = True,
                 env: Mapping[str, str] | None = None) -> ConfigCheck:
    """Every problem of every file as ``file:line: key: message`` lines, all in one pass.

    Imports stage classes and input_check callables by default, as a worker will: in a
    fresh interpreter (:mod:`pipelines.config.imports`), whatever this process imported.
    """
    try:
        loaded = load_config(paths, state_dir=state_dir, import_classes=import_classes, env=env)
    except ConfigError as exc:
        return ConfigCheck([str(issue) for issue in getattr(exc, "issues", [exc])],
                           list(getattr(exc, "files", [])))
    return ConfigCheck([], list(loaded.read))


def check_files(paths: Iterable[str | os.PathLike], *,
                state_dir: str | os.PathLike | None = None, import_classes: bool = True,
                env: Mapping[str, str] | None = None) -> list[str]:
    """The problems of :func:`check_config` alone ([] when all is well)."""
    return check_config(paths, state_dir=state_dir, import_classes=import_classes,
                        env=env).problems


# --- the loading session -----------------------------------------------------------

@dataclass
class _Record:
    """A pipeline name as declared by a master entry or by a pipeline file given directly."""

    doc: Doc               # where the name is declared
    path: tuple             # ('pipelines', i) or ('pipeline',)
    name: str
    dependencies: list[str]
    source: Path | None     # the pipeline file
    entry: MasterEntry | None = None
    file: PipelineFile | None = None
    file_doc: Doc | None = None


class _Session:
    """One load: collects issues from every file before anything is raised."""

    def __init__(self, state_dir, env, import_classes: bool):
        state = Path(os.path.abspath(state_dir)) if state_dir is not None else None
        self.subst = Substitutions(state, os.environ if env is None else env)
        self.import_classes = import_classes
        self.issues: list[ConfigIssue] = []
        self.records: list[_Record] = []
        self.masters: list[MasterFile] = []
        self.master_docs: list[tuple[Doc, MasterFile | None]] = []
        self._pipeline_cache: dict[Path, tuple[Doc | None, PipelineFile | None]] = {}
        self._read_order: list[str] = []
        self._seen: set[Path] = set()
        # (file, key path, (kind, dotted path)): what the import check's child is asked
        self._imports: list[tuple[Doc, tuple, tuple[str, str]]] = []

    def report(self, doc: Doc, path: tuple, message: str) -> None:
        self.issues.append(ConfigIssue(doc.display, doc.line_of(path), format_path(path), message))

    def files_read(self) -> list[str]:
        """Every file this load read (masters and the pipeline files they list), as shown."""
        return list(dict.fromkeys(self._read_order))

    def raise_issues(self) -> None:
        self.check_imports()
        if not self.issues:
            return
        order = {name: i for i, name in enumerate(dict.fromkeys(self._read_order))}
        for issue in self.issues:
            order.setdefault(issue.file, len(order))
        unique = list(dict.fromkeys(self.issues))
        unique.sort(key=lambda i: (order[i.file], i.line is None, i.line or 0))
        exc = ConfigError("\n".join(str(i) for i in unique))
        exc.issues = unique
        exc.files = self.files_read()
        raise exc

    # files

    def _read(self, path: Path, display: str) -> Doc | None:
        self._read_order.append(display)
        doc, issues = read_yaml(path, display)
        self.issues += issues
        return doc

    def load(self, path: Path, expect: str | None) -> None:
        absolute = Path(os.path.abspath(path))
        if absolute in self._seen:
            return
        self._seen.add(absolute)
        cached_doc, file = self._pipeline_cache.get(absolute, (None, None))
        doc = cached_doc or self._read(path, str(path))
        if doc is None:
            self._pipeline_cache.setdefault(absolute, (None, None))
            return
        kind = file_kind(doc.data)
        if doc.data is None:
            self.report(doc, (), "the file is empty; a pipeline file needs 'pipeline' and "
                                 "'stages', a master file needs 'pipelines'")
        elif kind is None:
            self.report(doc, (), "neither a pipeline file (top-level keys 'pipeline' and "
                                 "'stages') nor a master file (top-level key 'pipelines')")
        elif expect is not None and kind != expect:
            self.report(doc, (), f"this is a {kind} file, not a {expect} file")
        elif kind == "pipeline":
            if cached_doc is None:
                file = self._pipeline(doc)
            raw = doc.data.get("pipeline")
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str):
                self.records.append(_Record(doc, ("pipeline",), name, [], doc.path,
                                            file=file, file_doc=doc))
        else:
            self._master(doc)

    def _validate(self, doc: Doc, model: type[BaseModel]) -> BaseModel | None:
        problems: list[tuple[tuple, str]] = []
        doc.data = expand(doc.data, (), self.subst, problems)
        for path, message in problems:
            self.report(doc, path, message)
        failed = [p for p, _ in problems]
        try:
            return model.model_validate(doc.data, context={"base_dir": doc.path.parent})
        except ValidationError as exc:
            for path, message in pydantic_problems(exc, model):
                if not any(path[:len(f)] == f for f in failed):
                    self.report(doc, path, message)
            return None

    def _pipeline(self, doc: Doc) -> PipelineFile | None:
        file = self._validate(doc, PipelineFile)
        self._check_stages(doc)
        if self.import_classes:  # from the file itself: checked even if its model failed
            self._imports += [(doc, path, (IMPORT, dotted))
                              for path, dotted in named_imports(doc.data)]
            # retry_on / no_retry_on name exception classes: imported by the same child
            self._imports += [(doc, path, (key, name))
                              for path, key, name in retry_key_names(doc.data)]
        if file is not None:
            file._source = doc.path
        self._pipeline_cache[doc.path] = (doc, file)
        return file

    def _master(self, doc: Doc) -> None:
        master = self._validate(doc, MasterFile)
        self.master_docs.append((doc, master))
        if master is not None:
            master._source = doc.path
            self.masters.append(master)
        raw_entries = doc.data.get("pipelines")
        for i, raw in enumerate(raw_entries if isinstance(raw_entries, list) else []):
            entry = master.pipelines[i] if master is not None else None
            self._master_entry(doc, i, raw, entry, master)

    def _master_entry(self, doc: Doc, i: int, raw: Any, entry: MasterEntry | None,
                      master: MasterFile | None) -> None:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            return
        deps = raw.get("dependencies")
        deps = [d for d in deps if isinstance(d, str)] if isinstance(deps, list) else []
        rec = _Record(doc, ("pipelines", i), raw["name"], deps, None, entry)
        self.records.append(rec)
        config_file = raw.get("config_file")
        if not isinstance(config_file, str):
            return
        source = Path(os.path.abspath(doc.path.parent / os.path.expanduser(config_file)))
        if not source.is_file():
            return                      # reported by the model (config_file does not exist)
        rec.source = source
        if source not in self._pipeline_cache:
            display = os.path.normpath(os.path.join(os.path.dirname(doc.display),
                                                    os.path.expanduser(config_file)))
            file_doc = self._read(source, display)
            self._pipeline_cache[source] = (file_doc, None)
            if file_doc is not None:
                if file_kind(file_doc.data) != "pipeline":
                    self.report(file_doc, (), "this is not a pipeline file (it needs top-level "
                                              "keys 'pipeline' and 'stages')")
                else:
                    self._pipeline(file_doc)
        rec.file_doc, rec.file = self._pipeline_cache[source]
        if rec.file is not None:
            if rec.file.name != rec.name:
                self.report(doc, rec.path + ("name",),
                            f"{rec.name!r} does not match the name {rec.file.name!r} in "
                            f"{rec.file_doc.display} (pipeline.name); use the same name in both")
            elif master is not None:
                master._pipeline_files[rec.name] = rec.file

    # checks across keys

    def _check_stages(self, doc: Doc) -> None:
        stages = doc.data.get("stages") if isinstance(doc.data, dict) else None
        if not isinstance(stages, list):
            return
        items, previous = [], None
        for i, raw in enumerate(stages):
            name = raw.get("name") if isinstance(raw, dict) else None
            if not isinstance(name, str):
                previous = None
                continue
            prereqs = raw.get("prerequisites")
            if prereqs is None:
                prereqs = [previous] if previous else []
            elif isinstance(prereqs, list):
                prereqs = [p for p in prereqs if isinstance(p, str)]
            else:
                prereqs = []
            items.append((doc, ("stages", i), name, prereqs))
            previous = name
        self._check_graph(items, noun="stage", key="prerequisites", cycle_at=(doc, ("stages",)),
                          self_loop="stage {name!r} cannot be its own prerequisite",
                          cycle="prerequisite cycle {cycle}; remove one of these prerequisites")

    def _check_graph(self, items: list[tuple[Doc, tuple, str, list[str]]], *, noun: str,
                     key: str, cycle_at: tuple[Doc, tuple] | None, self_loop: str,
                     cycle: str, known: set[str] | None = None, unique: bool = True) -> None:
        """Duplicate names, unknown and self references, and the first cycle among ``items``."""
        first: dict[str, tuple[Doc, tuple]] = {}
        for doc, path, name, _ in items:
            if name in first and unique:
                where = (f"also {format_path(first[name][1])}" if first[name][0] is doc
                         else f"also in {first[name][0].display}")
                self.report(doc, path + ("name",), f"duplicate {noun} name {name!r} ({where}); "
                                                   f"give each {noun} a unique name")
            else:
                first.setdefault(name, (doc, path))
        known = set(first) if known is None else known
        graph: dict[str, list[str]] = {}
        for doc, path, name, refs in items:
            for ref in refs:
                if ref == name:
                    self.report(doc, path + (key,), self_loop.format(name=name))
                elif ref not in known:
                    self.report(doc, path + (key,), _unknown(noun, ref, known))
            graph.setdefault(name, []).extend(r for r in refs if r != name and r in known)
        found = find_cycle(graph)
        if found:
            doc, path = cycle_at or first[found[0]]
            self.report(doc, path, cycle.format(cycle=" -> ".join(found)))

    def check_across(self) -> None:
        """Pipeline names, dependencies and upstream triggers, over every file loaded."""
        recs = self.unique_records()
        masters = [doc for doc, _ in self.master_docs]
        cycle_at = (masters[0], ("pipelines",)) if len(masters) == 1 else None
        items = [(r.doc, r.path, r.name, r.dependencies) for r in recs]
        self._check_graph(items, noun="pipeline", key="dependencies", cycle_at=cycle_at,
                          self_loop="pipeline {name!r} cannot depend on itself",
                          cycle="dependency cycle {cycle}; remove one of these dependencies")
        known = {r.name for r in recs}
        upstream = []
        for rec in recs:
            if rec.file is None:
                continue
            for i, trig in enumerate(rec.file.triggers):
                if trig.type == "upstream":
                    upstream.append((rec.file_doc, ("triggers", i), rec.name, trig.pipelines))
        self._check_graph(upstream, noun="pipeline", key="pipelines", cycle_at=None, known=known,
                          unique=False,
                          self_loop="pipeline {name!r} cannot be its own upstream",
                          cycle="upstream trigger cycle {cycle} would run for ever; "
                                "remove one of these upstream triggers")

    def unique_records(self) -> list[_Record]:
        """Drop a pipeline file given directly when a master entry lists the same file."""
        listed = {(r.name, r.source) for r in self.records if r.path[0] == "pipelines"}
        out, seen = [], set()
        for rec in self.records:
            key = (rec.name, rec.source)
            if rec.path[0] == "pipeline" and (key in listed or key in seen):
                continue
            seen.add(key)
            out.append(rec)
        return out

    def merged_settings(self) -> tuple[MasterOrchestration, DaemonSettings, RetainSettings]:
        merged = []
        for section, model in (("orchestration", MasterOrchestration), ("daemon", DaemonSettings),
                               ("retain", RetainSettings)):
            values: dict[str, Any] = {}
            origin: dict[str, Doc] = {}
            for doc, master in self.master_docs:
                if master is None:
                    continue
                settings = getattr(master, section)
                for key in sorted(settings.model_fields_set):
                    value = getattr(settings, key)
                    if key in values and values[key] != value:
                        self.report(doc, (section, key),
                                    f"conflicts with the value set in {origin[key].display}; "
                                    "set it in one master file only")
                    values.setdefault(key, value)
                    origin.setdefault(key, doc)
            merged.append(model.model_validate(values))
        return merged[0], merged[1], merged[2]

    def check_imports(self) -> None:
        """Import every collected dotted path at once, in a fresh interpreter (imports.py)."""
        reported = {(i.file, i.path) for i in self.issues}  # a bad value is not imported too
        targets = [(doc, path, request) for doc, path, request in self._imports
                   if (doc.display, format_path(path)) not in reported]
        self._imports = []
        parameters: dict[str, dict[str, Any]] = {}
        found = check_names([request for _, _, request in targets],
                            parameters=parameters) if targets else {}
        for doc, path, (kind, dotted) in targets:
            if found.get((kind, dotted)):
                self.report(doc, path, found[(kind, dotted)])
            elif (kind == IMPORT and dotted in parameters and path[0] == "stages"
                  and path[-1] == "class"):
                # the class is made with the stage's config as keywords, at every run: a key it
                # does not take fails every run, so it is a problem of the file, said now
                stage = doc.data["stages"][path[1]]
                config = stage.get("config", {})
                if (not isinstance(config, dict) or stage.get("enabled") is False
                        or (doc.display, format_path(("stages", path[1], "config"))) in reported):
                    continue  # a config reported already, or a stage that is not run
                # keys the stage kind takes for itself, never passed to the class
                own = _STAGE_OWN_KEYS.get(stage.get("type"), ())
                config = {k: v for k, v in config.items() if k not in own}
                for where, message in _config_problems(dotted, config, parameters[dotted]):
                    self.report(doc, ("stages", path[1], *where), message)


#: ``config:`` keys a stage kind consumes itself (pipelines/stage.py), not its class
_STAGE_OWN_KEYS = {"validator": ("schema_path",)}


def _config_problems(dotted: str, config: dict[str, Any],
                     takes: dict[str, Any]) -> list[tuple[tuple, str]]:
    """(key path under the stage, message) for each ``config:`` key the class ``dotted`` does
    not take, and for the keywords it needs that ``config:`` lacks."""
    name = dotted.rpartition(".")[2]
    names = [n for n in takes.get("names", []) if isinstance(n, str)]
    shown = ", ".join(names) if names else "none"
    out: list[tuple[tuple, str]] = []
    if not takes.get("any"):
        for key in config:
            if key not in names:
                hint = did_you_mean(str(key), names)
                out.append((("config", key), f"{name} takes no option {key!r}"
                            + (f"; {hint}" if hint else "") + f" (its options: {shown})"))
    missing = [n for n in takes.get("required", []) if n not in config]
    if missing:
        out.append((("config",), f"{name} needs the option(s) {', '.join(missing)} "
                                 f"(its options: {shown})"))
    return out


def _unknown(noun: str, name: str, known: set[str]) -> str:
    hint = did_you_mean(name, known)
    if hint:
        return f"unknown {noun} {name!r}; {hint}"
    if known:
        return f"unknown {noun} {name!r}; known {noun}s are {', '.join(sorted(known))}"
    return f"unknown {noun} {name!r}"

