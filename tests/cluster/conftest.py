"""One real Dask cluster and one S3 endpoint on loopback for the whole of tests/cluster.

Started once per session (3–4 s), stopped by PID at the end.  Tests that kill
the scheduler or a worker start a cluster of their own (module-scoped), so
that no other test sees the damage.
"""

from __future__ import annotations

import pytest

from .processes import S3_ENV, DaskCluster, S3Server, need_dask


@pytest.fixture(scope="package")  # stopped once tests/cluster is done
def s3(tmp_path_factory):
    need_dask()
    server = S3Server(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="package")  # stopped once tests/cluster is done
def cluster(tmp_path_factory, s3):
    need_dask()
    found = DaskCluster(tmp_path_factory.mktemp("dask"), workers=2)
    yield found
    found.stop()


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch):
    """boto3 in this process finds moto's credentials in the environment, as the daemon would."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
