"""What the object store's failures say: which of its settings to look at (the bucket, the
credentials, the endpoint), and that a frozen endpoint fails a call instead of holding it.
Against moto's S3 server on loopback, and a socket that never answers."""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest

from state import objectstore
from state.errors import ObjectStoreError
from state.objectstore import ObjectStore


def _input(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("a,b\n1,2\n")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_bucket_that_does_not_exist_is_named_with_the_fix(s3, tmp_path):
    store = ObjectStore({**s3.settings(), "url": "s3://no-such-bucket-ahgd/outputs"})
    path, sha = _input(tmp_path)
    fix = (f"the bucket 'no-such-bucket-ahgd' does not exist at {s3.endpoint}: create it, or "
           "fix daemon.object_store.url")
    with pytest.raises(ObjectStoreError) as put:   # what a run's first stage does
        store.put_input(path, sha)
    assert fix in str(put.value)
    with pytest.raises(ObjectStoreError) as listed:   # what the collection does
        store.objects("data/")
    assert fix in str(listed.value)


def test_missing_credentials_are_named_as_such(s3, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")   # no instance role to ask
    store = ObjectStore(s3.settings())
    with pytest.raises(ObjectStoreError) as exc:
        store.objects("data/")
    assert "NoCredentialsError" in str(exc.value)
    assert "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the " \
           "environment of the daemon and of every Dask worker, or credentials_file)" \
           in str(exc.value)
    assert "is up and reachable" not in str(exc.value)


def test_an_endpoint_that_never_answers_fails_the_call(monkeypatch):
    """A frozen endpoint (it takes the connection, never answers) held a call for about four
    minutes with botocore's defaults; with the store's read timeout the call fails, naming
    the endpoint.  The timeout is made 1 s here; the bound below only says it did not hang."""
    monkeypatch.setattr(objectstore, "READ_TIMEOUT_S", 1)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)   # the kernel completes each handshake; nothing ever reads or answers
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    store = ObjectStore({"url": "s3://ahgd-test/outputs", "endpoint_url": endpoint,
                         "region": "us-east-1"})
    found: list[BaseException] = []

    def call():
        try:
            store.objects("data/")
        except BaseException as exc:  # noqa: BLE001 - looked at below
            found.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    try:
        caller.start()
        caller.join(60)
        assert not caller.is_alive(), "the call to a silent endpoint did not end"
    finally:
        silent.close()
    [exc] = found
    assert isinstance(exc, ObjectStoreError)
    assert f"check that the object store at {endpoint} is up and reachable" in str(exc)
