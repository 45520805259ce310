"""The master file's ``daemon.executor`` and ``daemon.object_store``: where attempts run.

``executor: {type: process}`` (the default) is the daemon's warm pool of
worker processes.  ``executor: {type: dask, scheduler: tcp://host:8786}`` runs
attempts on a Dask distributed cluster; their outputs then travel through an
S3-compatible object store, ``object_store: {url: s3://bucket/prefix,
endpoint_url: ...}``, whose credentials come from the environment or a
``credentials_file``, never from the YAML.  ``ahgd config check`` checks
these with everything else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .values import ExistingFile, PositiveDuration, _choice, _text, fail

ExecutorType = _choice("an executor type", ("process", "dask"))
LostPolicy = _choice("a policy for a lost scheduler", ("wait", "local"))
SchedulerAddress = _text(r"^(tcp|tls)://[^\s/]+:[0-9]{1,5}$",
                         "{value} is not a Dask scheduler address; use tcp://HOST:PORT, or "
                         "tls://HOST:PORT with security (the scheduler's default port is 8786)")
BucketUrl = _text(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
                  "{value} is not a bucket URL; use s3://BUCKET or s3://BUCKET/PREFIX "
                  "(bucket names: lower-case letters, digits, '.' and '-')")
EndpointUrl = _text(r"^https?://[^\s/]+(/\S*)?$",
                    "{value} is not an endpoint URL; use https://HOST:PORT (or http:// on a "
                    "trusted network), as boto3 needs it")
#: keys that would put a secret into the YAML: refused, with where it goes instead
_SECRET_KEYS = ("access_key", "secret_key", "aws_access_key_id", "aws_secret_access_key",
                "session_token", "aws_session_token", "password", "secret")
_DASK_ONLY = ("scheduler", "security", "on_scheduler_lost", "scratch_dir")
_DEFAULTS = {"on_scheduler_lost": "wait"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsSettings(_Model):
    """TLS between the daemon and the scheduler (``tls://`` addresses): the CA that signed the
    cluster's certificates, and the daemon's own certificate and key."""

    ca_file: ExistingFile
    cert: ExistingFile
    key: ExistingFile


class ExecutorSettings(_Model):
    """Where stage attempts run: ``process`` (this host's worker pool) or ``dask``."""

    type: ExecutorType = "process"
    #: the Dask scheduler (type dask): tcp://HOST:PORT or tls://HOST:PORT
    scheduler: SchedulerAddress | None = None
    security: TlsSettings | None = None
    #: how long connecting to the scheduler may take, at start-up and on each reconnect
    connect_timeout: PositiveDuration = timedelta(seconds=10)
    #: worker processes on the daemon's host, for `executor: local` stages and loaders
    local_workers: int = Field(2, ge=1)
    #: with the scheduler lost: wait for it (new attempts queue) or run them here meanwhile
    on_scheduler_lost: LostPolicy = "wait"
    #: where attempts write on a Dask worker before upload (default: the worker's own
    #: local directory, ``dask worker --local-directory``)
    scratch_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _by_type(cls, data: Any) -> Any:
        if not isinstance(data, dict) or str(data.get("type", "process")).lower() != "process":
            return data
        # a key at its default is no setting (a dumped configuration has them all)
        extra = [k for k in _DASK_ONLY if data.get(k) not in (None, _DEFAULTS.get(k))]
        if extra:
            raise fail(f"{', '.join(extra)} only apply to `type: dask`; set type: dask "
                       "(with a scheduler), or remove them")
        return data

    @model_validator(mode="after")
    def _scheduler_needed(self) -> "ExecutorSettings":
        if self.type != "dask":
            return self
        if self.scheduler is None:
            raise fail("type: dask needs `scheduler: tcp://HOST:8786` (the address "
                       "`dask scheduler` prints at start-up)")
        tls = self.scheduler.startswith("tls://")
        if tls and self.security is None:
            raise fail(f"{self.scheduler} is a TLS address: add security: {{ca_file, cert, "
                       "key} (the cluster's CA, the daemon's certificate and key)")
        if self.security is not None and not tls:
            raise fail(f"security is set, but {self.scheduler} is not a tls:// address: "
                       "write tls://HOST:PORT, or remove security")
        return self


class ObjectStoreSettings(_Model):
    """The S3-compatible bucket that stage outputs travel through (AWS S3, MinIO, Ceph …)."""

    url: BucketUrl
    #: the service's address for anything but AWS S3, such as https://minio.internal:9000
    endpoint_url: EndpointUrl | None = None
    region: str | None = None
    #: an AWS-style credentials file (INI: aws_access_key_id, aws_secret_access_key); else
    #: boto3 looks in the environment (AWS_ACCESS_KEY_ID ...), as for any AWS tool
    credentials_file: ExistingFile | None = None
    profile: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            found = [k for k in data if str(k).lower() in _SECRET_KEYS]
            if found:
                raise fail(f"{', '.join(found)}: credentials never go in the YAML; set "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the daemon's "
                           "environment (systemd: EnvironmentFile=), or name a "
                           "credentials_file readable by the daemon only")
        return data

    def as_dict(self) -> dict[str, Any]:
        """What :mod:`state.objectstore` and the workers are given (no secrets in it)."""
        return {k: (str(v) if k == "credentials_file" else v)
                for k, v in self.model_dump().items() if v is not None}


def check_cluster(executor: ExecutorSettings, store: ObjectStoreSettings | None) -> None:
    """Settings that only make sense together (the daemon section's own validator)."""
    if executor.type == "dask" and store is None:
        raise fail("executor type dask needs daemon.object_store: stage outputs travel between "
                   "machines through an S3-compatible bucket (object_store: {url: "
                   "s3://BUCKET/PREFIX, endpoint_url: ...}); DuckDB files on NFS are no "
                   "substitute (its locking is unreliable there)")


__all__ = ["ExecutorSettings", "ObjectStoreSettings", "TlsSettings", "check_cluster"]
