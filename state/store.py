"""The data store: where stage outputs live, and how they are recorded and checked.

Layout under the state directory::

    data/<run_id>/<stage>-a<attempt>.duckdb   tables written by one stage attempt
    data/<run_id>/<stage>-a<attempt>.json     a plain value (JSON)
    data/<run_id>/<stage>-a<attempt>.pkl      a plain value (pickle)

One file per stage attempt: DuckDB allows one writing process per database
file, so concurrent stages never share a writable file; downstream stages
attach their inputs read-only.  The ``stage.completed`` event records an
*output reference* (a small dict, below) with the file's SHA-256; a file
without such an event does not exist as far as ahgd is concerned and is
removed by :func:`remove_unrecorded`.

Output references::

    {"kind": "none"}
    {"kind": "value", "format": "inline", "value": <json>}
    {"kind": "value", "format": "json" | "pickle", "path": "data/…", "sha256": "…", "bytes": n}
    {"kind": "tables", "format": "duckdb", "path": "data/…", "sha256": "…", "bytes": n,
     "tables": {"output": <rows>, …}}
    {"kind": "tables", "format": "inline", "tables": {…}, "data": {…}, "sha256": "…"}
        small tables in the event itself (pipelines.inlinetables): no file

An attempt that ran on another machine (a Dask worker) adds ``"uri": "s3://…"``:
its file is in the object store (:mod:`state.objectstore`) under the same
``path``, and readers fetch it into ``cache/objects/`` by its SHA-256
(:func:`local_path`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from .digest import sha256_file
from .errors import OutputMissing, StoreError

DATA_DIR = "data"
_SAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def safe_name(name: str) -> str:
    """A path component for a run id or stage name (no separators, no dot-dot)."""
    cleaned = _SAFE.sub("_", name).strip(".")
    if not cleaned:
        raise StoreError(f"{name!r} cannot be used in a file name; use letters, digits, _ . -")
    return cleaned


def run_dir(state_dir: Path, run_id: str) -> Path:
    return Path(state_dir) / DATA_DIR / safe_name(run_id)


def attempt_path(state_dir: Path, run_id: str, stage: str, attempt: int, suffix: str) -> Path:
    """``data/<run>/<stage>-a<attempt><suffix>`` under the state directory."""
    return run_dir(state_dir, run_id) / f"{safe_name(stage)}-a{attempt}{suffix}"


def relative(state_dir: Path, path: Path) -> str:
    return Path(path).relative_to(state_dir).as_posix()


def file_ref(state_dir: Path, path: Path, **extra: Any) -> dict[str, Any]:
    """An output reference for a finished file: its path, size and SHA-256."""
    return {
        "path": relative(state_dir, path),
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        **extra,
    }


def ref_path(state_dir: Path, ref: Mapping[str, Any]) -> Path | None:
    p = ref.get("path")
    return None if p is None else Path(state_dir) / p


def local_path(state_dir: Path, ref: Mapping[str, Any]) -> Path | None:
    """The file to read for ``ref``: its path under the state directory, or, for an output in
    the object store, the cached copy (fetched and its SHA-256 verified the first time)."""
    if ref.get("uri"):
        from . import objectstore

        return objectstore.for_ref(ref).fetch(ref, Path(state_dir) / objectstore.CACHE_DIR)
    return ref_path(state_dir, ref)


def check(state_dir: Path, ref: Mapping[str, Any], *, full: bool = True) -> dict[str, Any] | None:
    """What is on disk instead of the file ``ref`` records; None when it matches.

    Size first (a ``stat``), then, with ``full``, the SHA-256 (the expensive
    part: a caller that hashed the file once may settle for the size after).
    Found: ``{"exists": False}``, ``{"bytes": n}`` (another size) or
    ``{"bytes": n, "sha256": h}`` (same size, other content).  An inline value
    or no output has nothing on disk to lose: None.
    """
    if ref.get("uri"):
        from . import objectstore

        return objectstore.for_ref(ref).check(ref, Path(state_dir) / objectstore.CACHE_DIR,
                                              full=full)
    path = ref_path(state_dir, ref)
    if path is None:
        return None
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return {"exists": False}
    if "bytes" in ref and size != ref["bytes"]:
        return {"bytes": size}
    if full:
        digest = sha256_file(path)
        if digest != ref.get("sha256"):
            return {"bytes": size, "sha256": digest}
    return None


def describe(state_dir: Path, ref: Mapping[str, Any], found: Mapping[str, Any], *, what: str) -> str:
    """The sentence for a :func:`check` mismatch, naming the file."""
    path = ref.get("uri") or ref_path(state_dir, ref)
    if found.get("exists") is False:
        return f"the {what} is gone: {path} does not exist"
    if "sha256" not in found:
        return f"the {what} was altered: {path} has {found['bytes']} bytes, {ref.get('bytes')} were recorded"
    return f"the {what} was altered: {path} does not match its recorded SHA-256"


def verify(state_dir: Path, ref: Mapping[str, Any] | None, *, what: str) -> None:
    """Raise OutputMissing if the file behind ``ref`` is gone, truncated or altered.

    ``what`` names the output in the message, e.g. "output of stage 'extract' of run R".
    """
    if not ref:
        raise OutputMissing(f"the {what} was never recorded")
    found = check(state_dir, ref)
    if found is not None:
        raise OutputMissing(describe(state_dir, ref, found, what=what))


def remove_unrecorded(state_dir: Path, run_id: str, keep: Iterable[str]) -> list[Path]:
    """Delete files of ``run_id`` that no ``stage.completed`` refers to; return them.

    ``keep`` holds the recorded relative paths.  Attempts that failed, timed
    out or were interrupted leave such files behind.
    """
    keep_set = {str(k) for k in keep}
    from . import objectstore  # attempts that ran elsewhere left their objects there

    objectstore.remove_unrecorded(f"{DATA_DIR}/{safe_name(run_id)}", keep_set)
    d = run_dir(state_dir, run_id)
    removed = []
    if not d.is_dir():
        return removed
    for p in sorted(d.iterdir()):
        if relative(state_dir, p) in keep_set:
            continue
        # DuckDB side files (.wal) belong to their database file
        base = p.name[: -len(".wal")] if p.name.endswith(".wal") else p.name
        if relative(state_dir, p.with_name(base)) in keep_set and p.name != base:
            continue
        try:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def remove_attempt(state_dir: Path, run_id: str, stage: str, attempt: int) -> None:
    """Delete what one attempt wrote (it did not succeed: nothing refers to it)."""
    for suffix in (".duckdb", ".duckdb.wal", ".json", ".pkl", ".json.tmp", ".pkl.tmp"):
        attempt_path(state_dir, run_id, stage, attempt, suffix).unlink(missing_ok=True)


def remove_run(state_dir: Path, run_id: str) -> None:
    """Delete every stored output of a run (``enable_checkpoints=False`` after success)."""
    shutil.rmtree(run_dir(state_dir, run_id), ignore_errors=True)

