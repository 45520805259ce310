"""A Dask worker's scratch cache (every output it made, every input and output it fetched)
is pruned by the worker itself: what no attempt there used for a day goes, at most once an
hour (pipelines/execution/remote.py, state/objectstore.py)."""

from __future__ import annotations

import os
import time

from pipelines.execution import remote
from state.objectstore import CACHE_DIR, prune_cache


def _cache(base):
    cache = base / CACHE_DIR
    (cache / "inputs" / "abc").mkdir(parents=True)
    files = {"old": cache / "aaa.duckdb", "new": cache / "ccc.duckdb",
             "input": cache / "inputs" / "abc" / "mort.csv"}
    for path in files.values():
        path.write_bytes(b"x" * 100)
    for key in ("old", "input"):
        os.utime(files[key], (time.time() - 2 * 86400,) * 2)
    return files


def test_prune_cache_removes_what_was_not_used_for_the_age_given(tmp_path):
    files = _cache(tmp_path)
    assert prune_cache(tmp_path / CACHE_DIR) == (2, 200)
    assert not files["old"].exists() and not files["input"].parent.exists()
    assert files["new"].exists()
    assert prune_cache(tmp_path / CACHE_DIR, max_age_s=0, now=time.time() + 1) == (1, 100)
    assert prune_cache(tmp_path / "no-such-cache") == (0, 0)


def test_a_worker_prunes_its_scratch_at_most_once_an_hour(tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "_pruned_at", None)
    files = _cache(tmp_path)
    remote._prune(tmp_path)
    assert not files["old"].exists() and files["new"].exists()
    again = tmp_path / CACHE_DIR / "eee.duckdb"
    again.write_bytes(b"x")
    os.utime(again, (time.time() - 2 * 86400,) * 2)
    remote._prune(tmp_path)            # within the hour: not looked at again
    assert again.exists()
    monkeypatch.setattr(remote, "_pruned_at", time.monotonic() - remote.PRUNE_EVERY_S - 1)
    remote._prune(tmp_path)
    assert not again.exists()
