"""Retention: what the state directory may let go of, found by walking it against the history.

:func:`plan` walks the areas of the state directory (``data/``, ``files/``, ``inputs/``,
``duplicates/``, ``quarantine/``, ``logs/``, ``tmp/duckdb``, ``metrics/``, ``cache/``), asks
the history about each thing it finds (``state/removals.py``) and yields an :class:`Item`
for each one the policy (``pipelines/config/retain.py``) lets go, with the rule and the
reason.  It is a
generator that also yields ``None`` after every small chunk of work: a caller in a hurry
(the daemon's loop) stops there and comes back later.  It removes nothing itself
(``ahgd_daemon/removal.py`` does).

Never let go, whatever the policy says (README.md, "Retention", says it for users):

- anything of a run that may still run: PENDING, RUNNING, PARKED, and FAILED or CANCELLED
  inside its retry window (``failed_runs_for`` after it ended): its own outputs, outputs of
  other runs it reused, its input;
- while a run waits to start with ``resume_from``, the outputs of its pipeline;
- the outputs of the ``successful_runs`` newest completed runs of each pipeline (the
  newest one even over ``data_budget``), and the input of the newest one;
- the event log (``history.db``), the warehouse, locks, and anything the history does not
  know (a folder no run recorded is left alone, and counted).

With an object store (a Dask executor's bucket, ``state/objectstore.py``) the same rules
apply to ``<prefix>/data/<run>/`` and ``<prefix>/files/<sha256>/`` there (area ``bucket``),
decided from the history alone (a run whose outputs are in the bucket may have no
``data/<run>`` here).  The bucket is listed on the collector's thread for object-store
calls: the walk yields that call's ``Future`` until it is done, and a caller in a hurry
comes back once it is (the daemon's loop never waits for the network).  When it cannot be
listed, nothing of it is planned and :attr:`Walk.bucket_error` says why.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pipelines.config.retain import Policy
from pipelines.durations import format_duration
from state import format_ts, parse_ts, removals
from state.statedir import entries
from state.store import safe_name

#: the areas, in the order they are walked (and shown)
AREAS = ("data", "files", "inputs", "duplicates", "quarantine", "logs", "tmp", "metrics",
         "cache", "bucket")
#: things looked at between two pauses of the walk
CHUNK = 100
#: a DuckDB spill file untouched this long belongs to no query any more
TMP_AGE = timedelta(days=1)
#: an unfinished metrics file (a crash's leftover) untouched this long
METRICS_TMP_AGE = timedelta(hours=1)
TMP_DIR = ("tmp", "duckdb")


@dataclass
class Item:
    """One thing to remove: a run's data folder, a stored input's folder, a set-aside file."""

    area: str
    path: str                    # relative to the state directory
    bytes: int
    files: list[str]             # the files it holds (a folder) or is (with a reason file)
    rule: str                    # the retain: key (or tmp / metrics / keep_outputs)
    reason: str
    pipeline: str | None = None
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Walk:
    """What a walk saw besides the items: sizes by area, what it kept and why."""

    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(AREAS, 0))
    kept: dict[str, int] = field(default_factory=dict)
    over_budget: int | None = None    # bytes data/ stays over data_budget after the pass
    bucket_error: str | None = None   # the object store could not be listed: why, what to do

    def keep(self, why: str) -> None:
        self.kept[why] = self.kept.get(why, 0) + 1


#: runs an object-store call off the caller's thread (the collector's one thread for them)
Submit = Callable[[Callable[[], Any]], Future]


def plan(history: Any, state_dir: Path, policy: Policy, now: datetime, walk: Walk, *,
         pipeline: str | None = None, store: Any = None,
         submit: Submit | None = None) -> Iterator[Item | Future | None]:
    """Every item the policy lets go (``None`` between chunks of work, a ``Future`` while
    the object store ``store`` is being listed by ``submit``); ``walk`` fills in."""
    yield from _Planner(history, Path(state_dir), policy, now, walk, pipeline, store,
                        submit).items()


class _Planner:
    def __init__(self, db: Any, state_dir: Path, policy: Policy, now: datetime, walk: Walk,
                 only: str | None, store: Any = None, submit: Submit | None = None):
        self.db, self.state_dir, self.policy, self.now = db, state_dir, policy, now
        self.walk, self.only, self.store, self.submit = walk, only, store, submit
        self._where = ""  # "bucket: " while the object store's folders are judged
        self.protected_runs: dict[str, str] = {}    # run_id -> why nothing of it may go
        self.protected_dirs: dict[str, str] = {}    # data/<dir> -> why (a run that may run)
        self.newest_refs: dict[str, set[str]] = {}  # data/<dir> -> newest runs that read it
        self.resuming: set[str] = set()             # pipelines with a run waiting to resume
        self._newest: dict[str, list[str]] = {}

    def items(self) -> Iterator[Item | None]:
        self._protect()
        yield None
        yield from self._data()
        yield from self._inputs("files")
        yield from self._inputs("inputs")
        yield from self._set_aside("duplicates")
        yield from self._set_aside("quarantine")
        yield from self._logs()
        if self.only is None:
            yield from self._tmp()
            yield from self._cache()
        if self.store is not None and self.submit is not None:
            yield from self._bucket()

    def _keep(self, why: str) -> None:
        self.walk.keep(self._where + why)

    # -- what nothing may touch ---------------------------------------------------------

    def _protect(self) -> None:
        for run in removals.unfinished_runs(self.db):
            self.protected_runs[run["run_id"]] = f"run {run['run_id']} is {run['state']}"
            if run["state"] == "PENDING" and run["params"].get("resume_from") \
                    and not run["started_at"]:
                self.resuming.add(run["pipeline"])
        longest = max([self.policy.default.failed_runs_for,
                       *(r.failed_runs_for for r in self.policy.pipelines.values())])
        for run in removals.retryable_runs(self.db, format_ts(self.now - longest)):
            until = parse_ts(run["ended_at"]) + self.policy.of(run["pipeline"]).failed_runs_for
            if until > self.now:
                self.protected_runs[run["run_id"]] = (
                    f"run {run['run_id']} is {run['state']} and may be retried until "
                    f"{format_ts(until)} (retain.failed_runs_for)")
        for run_id, dirs in self._output_dirs(list(self.protected_runs)).items():
            for d in dirs:
                self.protected_dirs.setdefault(d, f"needed: {self.protected_runs[run_id]}")

    def _output_dirs(self, run_ids: list[str]) -> dict[str, set[str]]:
        """run_id -> the data/<dir> folders of its completed stages' outputs."""
        out: dict[str, set[str]] = {}
        for run_id, paths in removals.output_paths(self.db, run_ids).items():
            for path in paths:
                parts = Path(path).parts
                if len(parts) >= 2 and parts[0] == "data":
                    out.setdefault(run_id, set()).add(f"data/{parts[1]}")
        return out

    def newest(self, pipeline: str) -> list[str]:
        """The newest completed runs of ``pipeline`` that keep their outputs, newest first."""
        if pipeline not in self._newest:
            ids = removals.newest_completed(self.db, pipeline,
                                            self.policy.of(pipeline).successful_runs)
            self._newest[pipeline] = ids
            for run_id, dirs in self._output_dirs(ids).items():
                for d in dirs:
                    self.newest_refs.setdefault(d, set()).add(run_id)
        return self._newest[pipeline]

    # -- data/<run> ---------------------------------------------------------------------

    def _data(self) -> Iterator[Item | None]:
        root = self.state_dir / "data"
        names = sorted(e.name for e in entries(root) if e.is_dir(follow_symlinks=False)
                       and not e.name.startswith("."))
        budget: list[tuple[str, Item]] = []
        removed = 0
        for start in range(0, len(names), CHUNK):
            chunk = names[start:start + CHUNK]
            runs = removals.runs_by_id(self.db, chunk)
            for name in chunk:
                run = runs.get(name) or self._run_of_unsafe(name)
                size, files = _du(root / name)
                self.walk.sizes["data"] += size
                if run is None:
                    self.walk.keep("unknown: no run in the history has this folder")
                    continue
                if self.only is not None and run["pipeline"] != self.only:
                    continue
                item = self._data_item(f"data/{name}", run, size, files, budget)
                if item is not None:
                    removed += item.bytes
                    yield item
            yield None
        budget_bytes = self.policy.data_budget
        if budget_bytes is None or self.only is not None:
            return
        over = self.walk.sizes["data"] - removed - budget_bytes
        for _, item in sorted(budget, key=lambda b: b[0]):
            if over <= 0:
                break
            item.rule, item.reason = "data_budget", (
                f"data/ holds {removals.human_bytes(self.walk.sizes['data'] - removed)}, more "
                f"than retain.data_budget ({removals.human_bytes(budget_bytes)}): the outputs "
                "of older completed runs go first (the newest of each pipeline stays)")
            over -= item.bytes
            yield item
        self.walk.over_budget = over if over > 0 else None

    def _data_item(self, path: str, run: dict[str, Any], size: int, files: list[str],
                   budget: list[tuple[str, Item]]) -> Item | None:
        run_id, pipeline, state = run["run_id"], run["pipeline"], run["state"]
        item = Item("data", path, size, files, "", "", pipeline, run_id)
        newest = self.newest(pipeline)
        if run_id in self.protected_runs or path in self.protected_dirs \
                or pipeline in self.resuming:  # the last: a run waits to resume from them
            self._keep("needed by a run that may still run")
            return None
        if state == "COMPLETED" and run["params"].get("keep_outputs", True) is False:
            item.rule, item.reason = "keep_outputs", (
                "its pipeline runs with enable_checkpoints=False: outputs are not kept")
            return item
        readers = self.newest_refs.get(path)
        if readers:  # its own run is among the newest completed, or one of those reused them
            self._keep("among the newest completed runs")
            if newest and newest[0] not in readers:
                budget.append((run["ended_at"] or "", item))
            return None
        if state == "COMPLETED":
            keep = self.policy.of(pipeline).successful_runs
            item.rule, item.reason = "successful_runs", (
                f"it completed {run['ended_at']}, and is not among the {keep} newest completed "
                f"runs of {pipeline} (retain.successful_runs: {keep})")
            return item
        if state in removals.RETRYABLE:
            window = self.policy.of(pipeline).failed_runs_for
            ended = parse_ts(run["ended_at"])
            verb = "failed" if state == "FAILED" else "was cancelled"
            item.rule, item.reason = "failed_runs_for", (
                f"it {verb} {run['ended_at']}; its retry window (retain.failed_runs_for: "
                f"{format_duration(window)}) ended {format_ts(ended + window)}")
            return item
        self._keep("needed by a run that may still run")
        return None

    def _run_of_unsafe(self, name: str) -> dict[str, Any] | None:
        """The run whose id, made safe for a file name, is ``name`` (ids with a space, ...)."""
        prefix = name.split("_", 1)[0]
        if not prefix:
            return None
        for run_id in removals.run_ids_from(self.db, prefix):
            if run_id != name and safe_name(run_id) == name:
                return removals.runs_by_id(self.db, [run_id]).get(run_id)
        return None

    # -- files/ and inputs/: stored inputs, by pipeline and SHA-256 ---------------------

    def _inputs(self, area: str) -> Iterator[Item | None]:
        seen = 0
        for pdir in _subdirs(self.state_dir / area):
            for sha_dir in _subdirs(pdir):
                size, files = _du(sha_dir)
                self.walk.sizes[area] += size
                if self.only is None or pdir.name == safe_name(self.only):
                    item = self._input_item(area, pdir.name, sha_dir, size, files)
                    if item is not None:
                        yield item
                seen += 1
                if seen % CHUNK == 0:
                    yield None
        yield None

    def _input_item(self, area: str, pipeline: str, sha_dir: Path, size: int,
                    files: list[str]) -> Item | None:
        path = f"{area}/{pipeline}/{sha_dir.name}"
        runs = [r for r in removals.runs_with_input(self.db, pipeline, sha_dir.name)
                if removals.relative_to_state(self.state_dir, r["params"].get("input_file", ""))
                .startswith(path + "/")]
        due = self._due_input(runs)
        if due is None:
            return None
        last, reason = due
        return Item(area, path, size, files, "inputs_for", reason, pipeline, last["run_id"],
                    {"sha256": sha_dir.name, "runs": [r["run_id"] for r in runs][-20:]})

    def _due_input(self, runs: list[dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
        """An input the runs ``runs`` read (of one pipeline here; of any in the bucket, which
        keeps one copy of the bytes for all): ``(the last of them, the reason in words)``
        when it may go, which is when none of them may still run or is its pipeline's newest
        completed run and each one's window has passed; else None, and why it stays."""
        if not runs:
            self._keep("unknown: no run in the history read this input")
            return None
        for run in runs:
            if run["run_id"] in self.protected_runs or run["state"] in removals.UNFINISHED:
                self._keep("needed by a run that may still run")
                return None
            newest = self.newest(run["pipeline"])
            if newest and run["run_id"] == newest[0]:
                self._keep("the input of the newest completed run")
                return None
        if any(r["ended_at"] is None or parse_ts(r["ended_at"])
               + self.policy.of(r["pipeline"]).inputs_for > self.now for r in runs):
            self._keep("not yet due")
            return None
        last = max(runs, key=lambda r: r["ended_at"])
        window = self.policy.of(last["pipeline"]).inputs_for
        return last, (f"the last run that read it ({last['run_id']}) ended {last['ended_at']}, "
                      f"more than retain.inputs_for ({format_duration(window)}) ago")

    # -- duplicates/ and quarantine/: files set aside -----------------------------------

    def _set_aside(self, area: str) -> Iterator[Item | None]:
        seen = 0
        for pdir in _subdirs(self.state_dir / area):
            found = {e.name: e for e in entries(pdir)}
            for name, entry in sorted(found.items()):
                if name.startswith(".") or name.endswith(".reason.json") or \
                        not entry.is_file(follow_symlinks=False):
                    continue
                members = [name] + ([name + ".reason.json"] if name + ".reason.json" in found
                                    else [])
                st = entry.stat(follow_symlinks=False)
                size = st.st_size + sum(found[m].stat(follow_symlinks=False).st_size
                                        for m in members[1:])
                self.walk.sizes[area] += size
                if self.only is None or pdir.name == safe_name(self.only):
                    item = self._set_aside_item(area, pdir, name, members, size, st)
                    if item is not None:
                        yield item
                seen += 1
                if seen % CHUNK == 0:
                    yield None
        yield None

    def _set_aside_item(self, area: str, pdir: Path, name: str, members: list[str], size: int,
                        st: os.stat_result) -> Item | None:
        recorded = removals.set_aside_at(self.db, area, str(pdir / name))
        at = parse_ts(recorded) if recorded else datetime.fromtimestamp(st.st_ctime,
                                                                        self.now.tzinfo)
        key = "duplicates_for" if area == "duplicates" else "quarantine_for"
        window = getattr(self.policy.of(pdir.name), key)
        if at + window > self.now:
            self.walk.keep("not yet due")
            return None
        when = format_ts(at) + ("" if recorded else " (the file's change time: no event found)")
        return Item(area, f"{area}/{pdir.name}/{name}", size, members, key,
                    f"set aside {when}, more than retain.{key} ({format_duration(window)}) ago",
                    pdir.name)

    # -- logs/<run>.jsonl: each run's own log -----------------------------------------

    def _logs(self) -> Iterator[Item | None]:
        root = self.state_dir / "logs"
        found = sorted((e.name[:-len(".jsonl")], e) for e in entries(root)
                       if e.name.endswith(".jsonl") and e.is_file(follow_symlinks=False))
        for start in range(0, len(found), CHUNK):
            chunk = found[start:start + CHUNK]
            runs = removals.runs_by_id(self.db, [name for name, _ in chunk])
            for name, entry in chunk:
                size = entry.stat(follow_symlinks=False).st_size
                self.walk.sizes["logs"] += size
                run = runs.get(name) or self._run_of_unsafe(name)
                if run is None:
                    self.walk.keep("unknown: no run in the history has this log")
                elif self.only is None or run["pipeline"] == self.only:
                    item = self._log_item(run, entry.name, size)
                    if item is not None:
                        yield item
            yield None

    def _log_item(self, run: dict[str, Any], name: str, size: int) -> Item | None:
        window = self.policy.of(run["pipeline"]).logs_for
        if run["run_id"] in self.protected_runs or run["state"] in removals.UNFINISHED:
            self.walk.keep("needed by a run that may still run")
            return None
        if not run["ended_at"] or parse_ts(run["ended_at"]) + window > self.now:
            self.walk.keep("not yet due")
            return None
        return Item("logs", f"logs/{name}", size, [name], "logs_for",
                    f"its run ended {run['ended_at']} ({run['state']}), more than "
                    f"retain.logs_for ({format_duration(window)}) ago", run["pipeline"],
                    run["run_id"])

    # -- tmp/duckdb and metrics/: leftovers --------------------------------------------

    def _tmp(self) -> Iterator[Item | None]:
        now = self.now.timestamp()
        for area, folder, age, what in (
                ("tmp", self.state_dir.joinpath(*TMP_DIR), TMP_AGE,
                 "a DuckDB spill file no query has touched for more than a day"),
                ("metrics", self.state_dir / "metrics", METRICS_TMP_AGE,
                 "an unfinished metrics file a crash left behind")):
            for entry in entries(folder):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                size = st.st_size if stat.S_ISREG(st.st_mode) else _du(Path(entry.path))[0]
                self.walk.sizes[area] += size
                if area == "metrics" and not (entry.name.startswith(".metrics.")
                                              and entry.name.endswith(".tmp")):
                    continue
                if now - st.st_mtime > age.total_seconds():
                    yield Item(area, f"{folder.relative_to(self.state_dir).as_posix()}/"
                                     f"{entry.name}", size, [entry.name], area, what)
            yield None


    # -- cache/objects: copies of object-store objects (a Dask executor) ----------------

    def _cache(self) -> Iterator[Item | None]:
        from state import objectstore

        now, age = self.now.timestamp(), objectstore.CACHE_AGE_S
        for n, (path, size, used) in enumerate(
                objectstore.cache_entries(self.state_dir / objectstore.CACHE_DIR), 1):
            self.walk.sizes["cache"] += size
            if now - used > age:
                files = [path.name] if not path.is_dir() else _du(path)[1]
                yield Item("cache", path.relative_to(self.state_dir).as_posix(), size, files,
                           "cache", "a copy of an object-store object that nothing here has "
                                    "read for more than a day (fetched again by its SHA-256 "
                                    "if it is wanted)")
            if n % CHUNK == 0:
                yield None
        yield None


    # -- the object store: <prefix>/data/<run>/ and <prefix>/files/<sha256>/ ------------------

    def _bucket(self) -> Iterator[Item | Future | None]:
        store = self.store
        listing = self.submit(lambda: (store.objects("data/"), store.objects("files/")))
        while not listing.done():
            yield listing
        try:
            data, files = listing.result()
        except Exception as exc:  # noqa: BLE001 - unreachable, refused: nothing planned
            where = store.settings.get("endpoint_url") or "AWS S3"
            # the error says which setting to look at (the bucket, the credentials, the
            # endpoint: objectstore._unreachable); a second, general hint here contradicted it
            self.walk.bucket_error = (
                f"the object store {store.url} (at {where}) could not be listed, so nothing in "
                f"it was collected this time and nothing was recorded: {exc}; the next "
                "collection tries again")
            return
        folders: dict[str, list[tuple[str, int, float]]] = {}
        for rel, size, written in [*data, *files]:
            self.walk.sizes["bucket"] += size
            parts = rel.split("/")
            if len(parts) < 3 or not parts[1]:
                self._keep("bucket: unknown: an object outside data/<run>/ and files/<sha256>/")
                continue
            folders.setdefault(f"{parts[0]}/{parts[1]}", []).append(
                ("/".join(parts[2:]), size, written))
        yield None
        names = sorted(folders)
        for start in range(0, len(names), CHUNK):
            chunk = names[start:start + CHUNK]
            recorded = removals.removed_at(self.db, [store.uri_for(n) for n in chunk])
            runs = removals.runs_by_id(self.db, [n[5:] for n in chunk if n.startswith("data/")])
            readers = removals.runs_with_inputs(
                self.db, [n[6:] for n in chunk if n.startswith("files/")])
            for name in chunk:
                objects, uri = folders[name], store.uri_for(name)
                # judged by the rules of the whole folder, whatever was recorded of it before:
                # a run reading it since (the newest, one that may still run) keeps it
                self._where = "bucket: "
                try:
                    if name.startswith("data/"):
                        item = self._bucket_data(name, objects, runs.get(name[5:]))
                    else:
                        item = self._bucket_input(name, objects, readers.get(name[6:], []))
                finally:
                    self._where = ""
                if item is None:
                    continue
                if uri in recorded and max(o[2] for o in objects) <= parse_ts(
                        recorded[uri]).timestamp():
                    # its removal was recorded, but the store went away before all of it was
                    # deleted: those objects go now, without a second event
                    item = self._bucket_item(name, objects, "recorded", "its removal was "
                                             f"recorded {recorded[uri]}; these objects were "
                                             "left then", item.pipeline, item.run_id,
                                             {"recorded": recorded[uri]})
                yield item
            yield None

    def _bucket_item(self, name: str, objects: list[tuple[str, int, float]], rule: str,
                     reason: str, pipeline: str | None, run_id: str | None,
                     extra: dict[str, Any]) -> Item:
        return Item("bucket", self.store.uri_for(name), sum(o[1] for o in objects),
                    sorted(o[0] for o in objects), rule, reason, pipeline, run_id,
                    {"object_store": self.store.url, "folder": name, **extra})

    def _bucket_data(self, name: str, objects: list[tuple[str, int, float]],
                     run: dict[str, Any] | None) -> Item | None:
        run = run or self._run_of_unsafe(name[5:])
        if run is None:
            self._keep("unknown: no run in the history has this folder")
            return None
        if self.only is not None and run["pipeline"] != self.only:
            return None
        size = sum(o[1] for o in objects)
        # the same rules as data/<run> here; retain.data_budget is this disk's, not the bucket's
        found = self._data_item(name, run, size, [], [])
        if found is None:
            return None
        return self._bucket_item(name, objects, found.rule, found.reason, found.pipeline,
                                 found.run_id, {})

    def _bucket_input(self, name: str, objects: list[tuple[str, int, float]],
                      runs: list[dict[str, Any]]) -> Item | None:
        if runs and self.only is not None and all(r["pipeline"] != self.only for r in runs):
            return None
        due = self._due_input(runs)
        if due is None:
            return None
        last, reason = due
        return self._bucket_item(name, objects, "inputs_for", reason, last["pipeline"],
                                 last["run_id"], {"sha256": name[6:],
                                                  "runs": [r["run_id"] for r in runs][-20:]})


def _subdirs(folder: Path) -> list[Path]:
    return sorted(Path(e.path) for e in entries(folder)
                  if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))


def files_under(folder: Path) -> Iterator[tuple[str, int]]:
    """Each file under ``folder``: its path and its size; links are not followed, and a file
    gone meanwhile is left out."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                yield path, os.lstat(path).st_size
            except OSError:
                continue


def _du(folder: Path) -> tuple[int, list[str]]:
    """The bytes and the file names (relative) under ``folder``; links are not followed."""
    found = list(files_under(folder))
    return sum(size for _, size in found), sorted(os.path.relpath(p, folder) for p, _ in found)

