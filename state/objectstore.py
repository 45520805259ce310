"""Stage outputs in an S3-compatible object store, for attempts that run on other machines.

With a remote executor (``daemon.executor: {type: dask}``) an attempt writes
its DuckDB file in local scratch on the worker, hashes it and puts it here;
``stage.completed`` records the object's ``uri`` beside the usual ``path``
(``data/<run>/<stage>-a<attempt>.duckdb``, which is also the object's key
under the configured prefix), ``sha256`` and ``bytes``.  Whoever reads it
(a downstream stage on any host, the daemon checking a resume) fetches it
into a cache keyed by its SHA-256 (``<dir>/cache/objects/``), verifies the
hash, and attaches the cached copy read-only.

Credentials never come from the YAML: boto3 finds them in the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, an instance role …) or in
the ``credentials_file`` the configuration names (an AWS-style INI file).
boto3 is imported only when an object store is used (``pip install
'ahgd-daemon[dask]'``).
"""

from __future__ import annotations

import configparser
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Mapping

from .digest import sha256_file
from .errors import ObjectStoreError, OutputMissing, StoreError
from .statedir import entries

CACHE_DIR = Path("cache") / "objects"
#: a cached copy not read for this long is removed (on the daemon's host by retention, on a
#: Dask worker by the worker itself, :func:`prune_cache`): fetched again by its SHA-256 if it
#: is wanted after that.  A read touches it (:meth:`ObjectStore.fetch`)
CACHE_AGE_S = 86400.0
#: the modification time of every run input fetched into a cache (2000-01-01 UTC), whenever
#: it was fetched (:meth:`ObjectStore.fetch_input`)
INPUT_MTIME_NS = 946_684_800 * 10**9
#: the settings as JSON, for worker processes started by a daemon that has an object store
ENV = "AHGD_OBJECT_STORE"
_log = logging.getLogger("state.objectstore")
_current: "ObjectStore | None" = None
_lock = threading.Lock()


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, prefix)`` (the prefix without slashes at its ends)."""
    text = str(url)
    if not text.startswith("s3://") or not text[5:].split("/", 1)[0]:
        raise StoreError(f"object store url {text!r} is not s3://BUCKET[/PREFIX]; name the "
                         "bucket (and a prefix for ahgd's objects), such as s3://ahgd/outputs")
    bucket, _, prefix = text[5:].partition("/")
    return bucket, prefix.strip("/")


class ObjectStore:
    """One bucket and prefix; thread-safe (boto3 clients are)."""

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
        self.url = str(self.settings["url"])
        self.bucket, self.prefix = parse_url(self.url)
        self._client: Any = None
        self._client_lock = threading.Lock()

    # -- names ------------------------------------------------------------------------

    def key_for(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def uri_for(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key_for(rel)}"

    def key_of(self, uri: str) -> str:
        bucket, key = parse_url(uri)
        if bucket != self.bucket:
            raise ObjectStoreError(
                f"{uri} is in bucket {bucket!r}, but the object store configured is {self.url}; "
                "point daemon.object_store.url at the bucket the outputs were written to")
        return key

    # -- the client ---------------------------------------------------------------------

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = _make_client(self.settings)
            return self._client

    # -- objects --------------------------------------------------------------------------

    def put(self, path: Path, rel: str, sha256: str) -> str:
        """Upload the finished file ``path`` as ``rel``; its URI."""
        try:
            self.client.upload_file(str(path), self.bucket, self.key_for(rel),
                                    ExtraArgs={"Metadata": {"sha256": sha256}})
        except ObjectStoreError:
            raise
        except Exception as exc:  # boto3's S3UploadFailedError, botocore's: not the file's
            raise _unreachable(self, self.uri_for(rel), exc) from None
        return self.uri_for(rel)

    def head(self, uri: str) -> dict[str, Any] | None:
        """``{"bytes", "sha256"}`` of the object (its recorded metadata), or None if it is gone."""
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self.key_of(uri))
        except Exception as exc:  # botocore's ClientError: 404 / NoSuchKey is "gone"
            if _status(exc) == 404 or "NoSuchKey" in str(exc) or "Not Found" in str(exc):
                return None
            raise _unreachable(self, uri, exc) from None
        return {"bytes": meta["ContentLength"], "sha256": (meta.get("Metadata") or {}).get("sha256")}

    def fetch(self, ref: Mapping[str, Any], cache_dir: Path, target: Path | None = None, *,
              mtime_ns: int | None = None) -> Path:
        """The object behind ``ref`` in ``cache_dir`` (downloaded once, its SHA-256 verified);
        at ``target`` if given, else named by its hash.  Marked used now (its access time),
        and given ``mtime_ns`` as its modification time when that is given."""
        uri, sha = str(ref["uri"]), str(ref.get("sha256") or "")
        target = target or cache_path(cache_dir, ref)
        if target.is_file() and ("bytes" not in ref or target.stat().st_size == ref["bytes"]):
            _touch(target, mtime_ns)  # used now: not pruned for CACHE_AGE_S
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            try:
                self.client.download_file(self.bucket, self.key_of(uri), str(tmp))
            except Exception as exc:
                if _status(exc) == 404 or "Not Found" in str(exc) or "NoSuchKey" in str(exc):
                    raise OutputMissing(f"{uri} is gone from the object store") from None
                raise _unreachable(self, uri, exc) from None
            digest = sha256_file(tmp)
            if sha and digest != sha:
                error = OutputMissing(f"{uri} does not match its recorded SHA-256 (found "
                                      f"{digest}, recorded {sha}): it was changed in the object "
                                      "store")
                error.found_sha256 = digest  # type: ignore[attr-defined]
                raise error
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        if mtime_ns is not None:
            _touch(target, mtime_ns)
        return target

    def check(self, ref: Mapping[str, Any], cache_dir: Path, *, full: bool) -> dict[str, Any] | None:
        """What the store holds instead of ``ref`` (as :func:`state.store.check`); None if it
        matches.  The size from the object's metadata; with ``full``, the bytes fetched into the
        cache and hashed."""
        found = self.head(str(ref["uri"]))
        if found is None:
            return {"exists": False}
        if "bytes" in ref and found["bytes"] != ref["bytes"]:
            return {"bytes": found["bytes"]}
        if full:
            cached = cache_path(cache_dir, ref)
            if cached.is_file():
                digest = sha256_file(cached)
                if digest == ref.get("sha256"):
                    return None
                cached.unlink(missing_ok=True)  # a damaged cached copy: fetch it again
            try:
                self.fetch(ref, cache_dir)
            except OutputMissing as exc:  # changed since (or gone between head and fetch)
                return {"bytes": found["bytes"], "sha256": getattr(exc, "found_sha256", None)
                        or "(unreadable)"}
        return None

    def put_input(self, path: Path, sha256: str) -> str:
        """A run's input file, for stages on other machines: ``files/<sha256>/<name>``, put once
        (an object already there with that hash is kept)."""
        rel = f"files/{sha256}/{Path(path).name}"
        found = self.head(self.uri_for(rel))
        if found is None or found.get("sha256") != sha256:
            self.put(Path(path), rel, sha256)
        return self.uri_for(rel)

    def fetch_input(self, uri: str, sha256: str, cache_dir: Path) -> Path:
        """The input file behind ``uri`` in ``cache_dir/inputs/<sha256>/<its name>``: its own
        name, so that messages about a line of it name the file the sender dropped.  Its
        modification time is always :data:`INPUT_MTIME_NS`: a stage identifies the input it
        read by its size and mtime, and a copy fetched again after the cache was pruned (a
        run resumed days later) must be the same file to it."""
        target = Path(cache_dir) / "inputs" / sha256 / Path(uri).name
        return self.fetch({"uri": uri, "sha256": sha256}, cache_dir, target,
                          mtime_ns=INPUT_MTIME_NS)

    def delete(self, rel_or_uri: str) -> None:
        key = self.key_of(rel_or_uri) if rel_or_uri.startswith("s3://") else self.key_for(rel_or_uri)
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def list(self, rel_prefix: str) -> list[str]:
        """The relative names of the objects under ``rel_prefix``."""
        base = self.key_for("")
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key_for(rel_prefix)):
            names.extend(item["Key"][len(base):] for item in page.get("Contents") or ())
        return names

    def objects(self, rel_prefix: str) -> list[tuple[str, int, float]]:
        """Each object under ``rel_prefix``: its relative name, bytes and when it was last
        written (Unix time); an :class:`ObjectStoreError` naming the store when it cannot
        be listed."""
        base = self.key_for("")
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self.key_for(rel_prefix)):
                for item in page.get("Contents") or ():
                    found.append((item["Key"][len(base):], int(item.get("Size") or 0),
                                  item["LastModified"].timestamp()))
        except ObjectStoreError:
            raise
        except Exception as exc:  # botocore: connection refused, timeout, 403 ...
            raise _unreachable(self, self.uri_for(rel_prefix), exc) from None
        return found

    def delete_many(self, rels: list[str]) -> None:
        """Delete the objects named (relative), a thousand a request; an
        :class:`ObjectStoreError` when the store cannot be reached or refuses one.  Inputs
        deleted are put again when a run wants them (the executor looks once a run:
        :meth:`put_input`)."""
        for start in range(0, len(rels), 1000):
            chunk = rels[start:start + 1000]
            try:
                reply = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self.key_for(r)} for r in chunk], "Quiet": True})
            except Exception as exc:
                raise _unreachable(self, self.uri_for(chunk[0]), exc) from None
            errors = reply.get("Errors") or []
            if errors:
                first = errors[0]
                raise ObjectStoreError(
                    f"the object store refused to delete {len(errors)} object(s) of "
                    f"{self.url}, such as {first.get('Key')} ({first.get('Code')}: "
                    f"{first.get('Message')}); check that the credentials may delete in the "
                    "bucket")

    def remove_unrecorded(self, rel_dir: str, keep: set[str]) -> list[str]:
        """Delete the objects under ``rel_dir`` whose relative name is not in ``keep``."""
        removed = []
        for name in self.list(rel_dir.rstrip("/") + "/"):
            if name not in keep:
                self.delete(name)
                removed.append(name)
        return removed


def cache_path(cache_dir: Path, ref: Mapping[str, Any]) -> Path:
    """Where the object of ``ref`` is kept in ``cache_dir``: by its SHA-256 (and suffix)."""
    suffix = Path(str(ref.get("path") or ref.get("uri") or "")).suffix
    return Path(cache_dir) / f"{ref.get('sha256')}{suffix}"


def _touch(path: Path, mtime_ns: int | None = None) -> None:
    """Mark ``path`` used now: its access time; its modification time, which a stage may
    compare with what it recorded (an input's size and mtime are its identity), is kept, or
    set to ``mtime_ns``."""
    try:
        os.utime(path, ns=(time.time_ns(),
                           path.stat().st_mtime_ns if mtime_ns is None else mtime_ns))
    except OSError:  # not ours to change (a read-only cache): it is pruned a day after its fetch
        pass


def _used(st: os.stat_result) -> float:
    return max(st.st_atime, st.st_mtime)


def cache_entries(cache_dir: Path) -> Iterator[tuple[Path, int, float]]:
    """Each entry of a cache (``cache/objects``): an object's file, a run input's folder
    (``inputs/<sha256>/``) or a download's leftover ``.part``, with its bytes and when it was
    last used (the newest access or modification time in it: a fetch that finds it touches
    its access time).  Links are not followed; what goes meanwhile is left out."""
    for entry in entries(Path(cache_dir)):
        try:
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "inputs":
                    continue
                for sub in entries(Path(entry.path)):
                    if sub.is_dir(follow_symlinks=False):
                        files = [f.stat(follow_symlinks=False) for f in entries(Path(sub.path))]
                        yield (Path(sub.path), sum(f.st_size for f in files),
                               max([_used(f) for f in files] or
                                   [_used(sub.stat(follow_symlinks=False))]))
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                yield Path(entry.path), st.st_size, _used(st)
        except OSError:  # removed meanwhile (another worker process's prune)
            continue


def prune_cache(cache_dir: Path, *, max_age_s: float = CACHE_AGE_S,
                now: float | None = None) -> tuple[int, int]:
    """Remove the entries of ``cache_dir`` not used for ``max_age_s``: how many, and their
    bytes.  A Dask worker's own cache (its scratch holds every output it made and every input
    it fetched); the daemon's host has retention do it, with an event for each."""
    now = time.time() if now is None else now
    count = freed = 0
    for path, size, used in cache_entries(cache_dir):
        if now - used <= max_age_s:
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            _log.warning("could not remove %s from the cache: %s", path, exc)
            continue
        count, freed = count + 1, freed + size
    return count, freed


# --------------------------------------------------------------------------- the process's store


def configure(settings: Mapping[str, Any] | None) -> "ObjectStore | None":
    """Use the object store ``settings`` describe in this process (None: none); kept if the
    same settings are given again (workers configure it for each attempt)."""
    global _current
    with _lock:
        if settings is None:
            _current = None
        elif _current is None or _current.settings != dict(settings):
            _current = ObjectStore(settings)
        return _current


def current() -> "ObjectStore | None":
    """The store of this process: configured, or named by ``$AHGD_OBJECT_STORE`` (a worker
    process of a daemon that has one); None."""
    if _current is None and os.environ.get(ENV):
        import json

        return configure(json.loads(os.environ[ENV]))
    return _current


def for_ref(ref: Mapping[str, Any]) -> ObjectStore:
    """The store that holds ``ref``'s object; an error that says what to configure if none."""
    found = current()
    if found is None:
        raise ObjectStoreError(
            f"the output {ref.get('uri')} is in an object store, but none is configured here; "
            "set daemon.object_store (url, endpoint_url) in the master file, as on the daemon "
            "that recorded it")
    return found


def remove_unrecorded(rel_dir: str, keep: set[str]) -> list[str]:
    """:meth:`ObjectStore.remove_unrecorded` on the configured store; nothing if none is
    configured, and a log line (not an error) when the store cannot be reached: an object
    left behind is garbage, not lost data."""
    found = current()
    if found is None:
        return []
    try:
        return found.remove_unrecorded(rel_dir, keep)
    except Exception as exc:  # the store is down: the next recovery of the run tries again
        _log.warning("could not remove unrecorded objects under %s: %s", found.uri_for(rel_dir), exc)
        return []


# --------------------------------------------------------------------------- boto3


#: how long a call to the object store may wait to connect, and for each read of its answer
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 30


def _make_client(settings: Mapping[str, Any]) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ObjectStoreError(
            "daemon.object_store needs boto3, which is not installed: "
            "pip install 'ahgd-daemon[dask]'") from None
    kwargs: dict[str, Any] = {}
    if settings.get("endpoint_url"):
        kwargs["endpoint_url"] = str(settings["endpoint_url"])
    if settings.get("region"):
        kwargs["region_name"] = str(settings["region"])
    if settings.get("credentials_file"):
        kwargs.update(read_credentials(Path(settings["credentials_file"]),
                                       str(settings.get("profile") or "default")))
    # botocore's defaults (60 s to connect, 60 s for each read, retried) held a stage RUNNING
    # on a frozen endpoint for about four minutes a call, saying nothing
    config = Config(retries={"max_attempts": 3}, connect_timeout=CONNECT_TIMEOUT_S,
                    read_timeout=READ_TIMEOUT_S)
    if settings.get("profile") and not settings.get("credentials_file"):
        return boto3.session.Session(profile_name=str(settings["profile"])).client(
            "s3", config=config, **kwargs)
    return boto3.session.Session().client("s3", config=config, **kwargs)


def read_credentials(path: Path, profile: str) -> dict[str, str]:
    """The keys of ``profile`` in an AWS-style credentials file (``aws_access_key_id``, ...)."""
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as exc:
        raise ObjectStoreError(f"cannot read the object store's credentials_file {path}: "
                                   f"{exc.strerror or exc}; make it readable by the daemon's "
                                   "user (and nobody else)") from None
    if not parser.has_section(profile):
        raise ObjectStoreError(f"{path} has no [{profile}] section; add one with "
                                   "aws_access_key_id and aws_secret_access_key")
    section = parser[profile]
    out = {}
    for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        if section.get(key):
            out[key] = section[key].strip()
    if "aws_access_key_id" not in out or "aws_secret_access_key" not in out:
        raise ObjectStoreError(f"{path} [{profile}] needs aws_access_key_id and "
                                   "aws_secret_access_key")
    return out


#: what botocore and S3 call a refusal of the credentials (a missing key is the first two)
_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "InvalidAccessKeyId",
                "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccessDenied")


def _unreachable(store: ObjectStore, uri: str, exc: BaseException) -> ObjectStoreError:
    """The store could not answer about ``uri``: not the output's fault, nor the stage's.
    Says which of the store's settings to look at: the bucket, the credentials, or the
    endpoint."""
    where = store.settings.get("endpoint_url") or "AWS S3"
    text = f"{type(exc).__name__}: {exc}"
    setting = None
    if "NoSuchBucket" in text:
        setting, hint = "bucket", (f"the bucket {store.bucket!r} does not exist at {where}: "
                                   "create it, or fix daemon.object_store.url")
    elif _status(exc) == 403 or any(name in text for name in _CREDENTIALS):
        setting, hint = "credentials", (
            "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the "
            "environment of the daemon and of every Dask worker, or credentials_file) and "
            "that they may read and write the bucket")
    else:
        hint = f"check that the object store at {where} is up and reachable from this host"
    return ObjectStoreError(f"the object store could not be asked about {uri} ({text}); {hint}",
                            setting=setting)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    try:
        return int(response["ResponseMetadata"]["HTTPStatusCode"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
