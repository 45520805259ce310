"""A run input fetched into a worker's cache keeps one modification time, however often it
is fetched: a stage identifies the input it read by its size and mtime, and the cache is
pruned after a day (a run resumed later fetches the input again).  Real S3 (moto's server)."""

from __future__ import annotations

import os
import time
import uuid

from state.objectstore import CACHE_DIR, ObjectStore, prune_cache
from state.store import sha256_file


def test_an_input_fetched_again_after_a_prune_is_the_same_file_to_a_stage(s3, tmp_path):
    store = ObjectStore(s3.settings(uuid.uuid4().hex[:8]))
    source = tmp_path / "aihw_mort_table1.csv"
    source.write_text("mort,category\n1,2\n")
    sha = sha256_file(source)
    uri = store.put_input(source, sha)
    cache = tmp_path / "scratch" / CACHE_DIR
    first = store.fetch_input(uri, sha, cache)
    identity = (first.stat().st_size, first.stat().st_mtime_ns)   # what an extract records
    two_days_ago = time.time_ns() - 2 * 86400 * 10**9
    os.utime(first, ns=(two_days_ago, first.stat().st_mtime_ns))  # not read since
    assert prune_cache(cache) == (1, source.stat().st_size)
    assert not first.exists()
    again = store.fetch_input(uri, sha, cache)                   # a run resumed days later
    assert again == first
    assert (again.stat().st_size, again.stat().st_mtime_ns) == identity
    assert prune_cache(cache) == (0, 0)                          # just used: kept
