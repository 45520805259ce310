"""CheckpointManager: formats round-trip, recovery strategies, integrity, retention, messages."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipelines.checkpointing import (
    INDEX_DB,
    CheckpointFormat,
    CheckpointManager,
    CheckpointValidation,
    RecoveryStrategy,
)
from pipelines.errors import CheckpointCorrupt, CheckpointError, CheckpointNotFound

T0 = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
TABLE_FORMATS = [CheckpointFormat.DUCKDB, CheckpointFormat.PARQUET]
PICKLE_FORMATS = [CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE]
REPO = Path(__file__).resolve().parents[2]

SA2 = pa.table({
    "sa2_code": ["101021007", "101021008", "101021009"],
    "name": ["Braidwood", None, "Karabar"],
    "population": [4321, 5012, 8794],
    "seifa": [1003.5, 987.25, 1010.0],
})
SA2_ROWS = [("101021007", "Braidwood", 4321, 1003.5), ("101021008", None, 5012, 987.25),
            ("101021009", "Karabar", 8794, 1010.0)]
TABLE_SOURCES = {
    "arrow": lambda: SA2,
    "relation": lambda: duckdb.connect().from_arrow(SA2),
    "pandas": lambda: SA2.to_pandas(),
    "list of dicts": lambda: SA2.to_pylist(),
}


class Clock:
    """A UTC clock the test moves by hand."""

    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclasses.dataclass
class Survey:
    name: str
    regions: set[str]
    counts: dict[str, list[int]]


class Trap:
    """Unpickling this touches ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def clock() -> Clock:
    """A hand-driven clock, so ordering and retention by age need no sleeping."""
    return Clock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The checkpoint directory, as the manager reports it in messages."""
    return (tmp_path / "ckpt").resolve()


@pytest.fixture
def manager(root: Path, clock: Clock):
    """A manager on a fresh checkpoint directory, driven by the hand clock."""
    with CheckpointManager(root, clock=clock) as mgr:
        yield mgr


def sample(fmt: CheckpointFormat):
    return SA2 if fmt in TABLE_FORMATS else {"rows": 3, "codes": ["101021007", "101021008"]}


def label(meta) -> str:
    return (f"checkpoint {meta.checkpoint_id!r} of stage {meta.stage_name!r} of pipeline "
            f"{meta.pipeline_name!r}: file {meta.file_path}")


def fix(meta) -> str:
    return (f"; restore the file from a backup, or drop the checkpoint with "
            f"delete_checkpoint({meta.checkpoint_id!r})")


def flip_middle_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


# -- formats ------------------------------------------------------------------------

@pytest.mark.parametrize("source", TABLE_SOURCES)
@pytest.mark.parametrize("fmt", TABLE_FORMATS, ids=lambda f: f.name)
def test_tables_round_trip_as_a_duckdb_relation(manager, fmt, source):
    meta = manager.create_checkpoint("health", "transform", TABLE_SOURCES[source](), format=fmt)
    rel, loaded = manager.load_checkpoint("health", "transform")
    assert isinstance(rel, duckdb.DuckDBPyRelation)
    assert rel.columns == ["sa2_code", "name", "population", "seifa"]
    assert sorted(rel.fetchall()) == SA2_ROWS
    assert rel.to_arrow_table().column("population").to_pylist() == [4321, 5012, 8794]
    assert rel.df()["seifa"].tolist() == [1003.5, 987.25, 1010.0]
    assert meta.file_path.suffix == {"DUCKDB": ".duckdb", "PARQUET": ".parquet"}[fmt.name]
    assert (meta.row_count, meta.data_size_bytes) == (3, None)
    assert loaded == meta


@pytest.mark.parametrize("fmt", TABLE_FORMATS, ids=lambda f: f.name)
def test_a_loaded_table_outlives_its_checkpoint(manager, fmt):
    meta = manager.create_checkpoint("health", "transform", SA2, format=fmt)
    rel, _ = manager.load_checkpoint_by_id(meta.checkpoint_id)
    manager.delete_checkpoint(meta.checkpoint_id)
    assert sorted(rel.fetchall()) == SA2_ROWS


def test_json_round_trips_nested_values(manager):
    data = {"pipeline": "health", "ok": True, "ratio": 0.25, "missing": None,
            "regions": [{"code": "101", "rates": [1.5, 2, None]}, {"code": "102", "rates": []}]}
    meta = manager.create_checkpoint("health", "extract", data, format=CheckpointFormat.JSON)
    loaded, _ = manager.load_checkpoint("health", "extract")
    assert loaded == data
    assert json.loads(meta.file_path.read_text()) == data
    assert meta.data_size_bytes == meta.size_bytes == meta.file_path.stat().st_size


@pytest.mark.parametrize("fmt", PICKLE_FORMATS, ids=lambda f: f.name)
def test_pickles_round_trip_arbitrary_objects(manager, fmt):
    survey = Survey("seifa", {"NSW", "VIC"}, {"2021": [1, 2], "2016": []})
    meta = manager.create_checkpoint("health", "transform", survey, format=fmt)
    loaded, _ = manager.load_checkpoint("health", "transform")
    assert loaded == survey and type(loaded) is Survey
    raw = meta.file_path.read_bytes()
    pickled = gzip.decompress(raw) if fmt is CheckpointFormat.COMPRESSED_PICKLE else raw
    assert pickled[:2] == b"\x80\x05"  # protocol 5
    assert meta.data_size_bytes == len(pickled)


def test_default_format_is_compressed_pickle_and_can_be_changed(root, clock):
    with CheckpointManager(checkpoint_dir=root, clock=clock) as mgr:
        assert mgr.create_checkpoint("health", "t", [1, 2]).format is CheckpointFormat.COMPRESSED_PICKLE
    with CheckpointManager(root, default_format="parquet", clock=clock) as mgr:
        meta = mgr.create_checkpoint("health", "t", SA2)
    assert meta.format is CheckpointFormat.PARQUET and meta.file_path.name.endswith(".parquet")


def test_metadata_records_the_file_and_lands_in_the_sqlite_index(manager, root):
    meta = manager.create_checkpoint("health", "extract", {"rows": 3}, version="v1.2.0",
                                     format=CheckpointFormat.JSON, metadata={"source": "ABS"})
    raw = meta.file_path.read_bytes()
    assert meta.created_at == T0 and meta.created_at.tzinfo is timezone.utc
    assert (meta.size_bytes, meta.sha256) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert (meta.version, meta.metadata) == ("v1.2.0", {"source": "ABS"})
    assert meta.file_path.parent == root / "health" / "extract"
    assert [p.name for p in meta.file_path.parent.iterdir()] == [meta.file_path.name]  # no temp left
    db = sqlite3.connect(root / INDEX_DB)
    try:
        row = db.execute(
            "SELECT checkpoint_id, format, version, size_bytes, sha256 FROM checkpoints").fetchall()
    finally:
        db.close()
    assert row == [(meta.checkpoint_id, "json", "v1.2.0", meta.size_bytes, meta.sha256)]
    with CheckpointManager(root) as other:
        assert other.list_checkpoints() == [meta]


# -- recovery strategies ---------------------------------------------------------------

@pytest.fixture
def three(manager, clock):
    """Three checkpoints of one stage a minute apart, versions v1, v2, v1."""
    made = []
    for version in ("v1", "v2", "v1"):
        made.append(manager.create_checkpoint("health", "transform", {"made": len(made)},
                                              version=version, format=CheckpointFormat.JSON))
        clock.advance(minutes=1)
    return made


def test_latest_returns_the_newest(manager, three):
    data, meta = manager.load_checkpoint("health", "transform", strategy=RecoveryStrategy.LATEST)
    assert (data, meta) == ({"made": 2}, three[2])
    assert manager.list_checkpoints() == three[::-1]


def test_checkpoints_made_in_the_same_instant_keep_their_order(manager):
    made = [manager.create_checkpoint("health", "transform", n, format="json") for n in range(3)]
    assert manager.list_checkpoints("health", "transform") == made[::-1]
    assert manager.load_checkpoint("health", "transform")[0] == 2


def test_latest_refuses_a_corrupt_newest_checkpoint(manager, three):
    flip_middle_byte(three[2].file_path)
    with pytest.raises(CheckpointCorrupt) as err:
        manager.load_checkpoint("health", "transform")
    actual = hashlib.sha256(three[2].file_path.read_bytes()).hexdigest()
    assert str(err.value) == (f"{label(three[2])} was altered (SHA-256 {actual} on disk, "
                              f"{three[2].sha256} recorded){fix(three[2])}")


def test_stable_skips_corrupt_checkpoints_and_says_which(manager, three):
    three[2].file_path.unlink()
    data, meta = manager.load_checkpoint("health", "transform", strategy=RecoveryStrategy.STABLE)
    assert (data, meta.checkpoint_id) == ({"made": 1}, three[1].checkpoint_id)
    assert meta.skipped_checkpoints == (three[2].checkpoint_id,)


def test_stable_with_nothing_corrupt_is_latest(manager, three):
    _, meta = manager.load_checkpoint("health", "transform", strategy="stable")
    assert meta == three[2]


def test_stable_fails_when_no_checkpoint_verifies(manager, three):
    for meta in three:
        meta.file_path.unlink()
    with pytest.raises(CheckpointCorrupt) as err:
        manager.load_checkpoint("health", "transform", strategy=RecoveryStrategy.STABLE)
    problems = "; ".join(f"{label(m)} is missing" for m in three[::-1])
    assert str(err.value) == (
        f"none of the 3 checkpoints of stage 'transform' of pipeline 'health' passes verification: "
        f"{problems}; restore the files from a backup, or drop them with delete_checkpoint(id)")


def test_versioned_returns_the_newest_with_that_version(manager, three):
    for version, expected in (("v1", three[2]), ("v2", three[1])):
        data, meta = manager.load_checkpoint("health", "transform", RecoveryStrategy.VERSIONED, version)
        assert meta == expected


def test_versioned_needs_a_version(manager, three):
    with pytest.raises(CheckpointError) as err:
        manager.load_checkpoint("health", "transform", strategy=RecoveryStrategy.VERSIONED)
    assert str(err.value) == (
        "RecoveryStrategy.VERSIONED needs a version; call load_checkpoint('health', 'transform', "
        "strategy=RecoveryStrategy.VERSIONED, version='...')")


def test_a_version_without_the_versioned_strategy_is_refused(manager, three):
    with pytest.raises(CheckpointError) as err:
        manager.load_checkpoint("health", "transform", version="v1")
    assert str(err.value) == ("version='v1' is only used with RecoveryStrategy.VERSIONED; pass "
                              "strategy=RecoveryStrategy.VERSIONED, or leave version out")


def test_an_unknown_version_lists_the_recorded_ones(manager, three):
    with pytest.raises(CheckpointNotFound) as err:
        manager.load_checkpoint("health", "transform", RecoveryStrategy.VERSIONED, "v3")
    assert str(err.value) == ("no checkpoint with version 'v3' for stage 'transform' of pipeline "
                              "'health'; versions recorded: 'v1', 'v2'")


def test_an_unknown_strategy_names_the_choices(manager, three):
    with pytest.raises(CheckpointError) as err:
        manager.load_checkpoint("health", "transform", strategy="newest")
    assert str(err.value) == (
        "strategy='newest' is not a RecoveryStrategy; use one of RecoveryStrategy.LATEST, "
        "RecoveryStrategy.STABLE, RecoveryStrategy.VERSIONED")


# -- integrity -------------------------------------------------------------------------

def damage(meta, how: str) -> str:
    """Damage the checkpoint file; return the problem validate_checkpoint must report."""
    path, size = meta.file_path, meta.size_bytes
    if how == "missing":
        path.unlink()
        return f"{label(meta)} is missing"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: size // 2])
        return f"{label(meta)} is truncated ({size // 2} bytes on disk, {size} recorded)"
    if how == "grown":
        path.write_bytes(path.read_bytes() + b"\0")
        return f"{label(meta)} is longer than recorded ({size + 1} bytes on disk, {size} recorded)"
    flip_middle_byte(path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{label(meta)} was altered (SHA-256 {actual} on disk, {meta.sha256} recorded)"


@pytest.mark.parametrize("how", ["missing", "truncated", "grown", "altered"])
@pytest.mark.parametrize("fmt", list(CheckpointFormat), ids=lambda f: f.name)
def test_damaged_files_are_reported_by_validate_and_refused_by_load(manager, fmt, how):
    meta = manager.create_checkpoint("health", "transform", sample(fmt), format=fmt)
    valid = CheckpointValidation(meta.checkpoint_id, True, [])
    assert manager.validate_checkpoint(meta.checkpoint_id) == valid
    problem = damage(meta, how)
    assert manager.validate_checkpoint(meta.checkpoint_id) == CheckpointValidation(
        meta.checkpoint_id, False, [problem])
    with pytest.raises(CheckpointCorrupt) as err:
        manager.load_checkpoint_by_id(meta.checkpoint_id)
    assert str(err.value) == problem + fix(meta)


@pytest.mark.parametrize("same_size", [True, False], ids=["same size", "other size"])
@pytest.mark.parametrize("fmt", PICKLE_FORMATS, ids=lambda f: f.name)
def test_a_pickle_that_fails_its_checksum_is_never_unpickled(manager, tmp_path, fmt, same_size):
    meta = manager.create_checkpoint("health", "transform", {"blob": os.urandom(4000)}, version="v1",
                                     format=fmt)
    marker = tmp_path / "unpickled"
    trap = pickle.dumps(Trap(marker), protocol=5)
    if fmt is CheckpointFormat.COMPRESSED_PICKLE:
        trap = gzip.compress(trap)
    if same_size:
        trap = trap.ljust(meta.size_bytes, b"\0")  # pickle stops at STOP; gzip skips zero padding
    meta.file_path.write_bytes(trap)
    for load in (lambda: manager.load_checkpoint("health", "transform"),
                 lambda: manager.load_checkpoint("health", "transform", RecoveryStrategy.STABLE),
                 lambda: manager.load_checkpoint("health", "transform", "versioned", "v1"),
                 lambda: manager.load_checkpoint_by_id(meta.checkpoint_id)):
        with pytest.raises(CheckpointCorrupt):
            load()
    assert not marker.exists()
    # the file really is a live trap: unpickling it directly springs it
    with (gzip.open if fmt is CheckpointFormat.COMPRESSED_PICKLE else open)(meta.file_path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


# -- retention ---------------------------------------------------------------------------

def test_retention_keeps_the_newest_max_checkpoints_per_stage(root, clock):
    with CheckpointManager(root, max_checkpoints=3, clock=clock) as mgr:
        other = mgr.create_checkpoint("health", "extract", "x", format="json")
        made = []
        for n in range(5):
            made.append(mgr.create_checkpoint("health", "transform", n, format="json"))
            clock.advance(minutes=1)
        assert mgr.list_checkpoints("health", "transform") == made[:1:-1]
        assert mgr.list_checkpoints("health", "extract") == [other]
    assert [m.file_path.exists() for m in made] == [False, False, True, True, True]


def test_retention_drops_checkpoints_older_than_retention_days(root, clock):
    with CheckpointManager(root, retention_days=7, clock=clock) as mgr:
        old = mgr.create_checkpoint("health", "transform", "old", format="json")
        clock.advance(days=7)
        week = mgr.create_checkpoint("health", "transform", "a week later", format="json")
        assert mgr.list_checkpoints() == [week, old]  # exactly 7 days old is kept
        clock.advance(seconds=1)
        new = mgr.create_checkpoint("health", "transform", "new", format="json")
        assert mgr.list_checkpoints() == [new, week]
    assert not old.file_path.exists()


def test_cleanup_applies_limits_and_returns_the_deleted_ids(manager, clock):
    made = {}
    for pipeline in ("health", "seifa"):
        for n in range(3):
            made[pipeline, n] = manager.create_checkpoint(pipeline, "load", n, format="json")
            clock.advance(minutes=1)
    deleted = manager.cleanup(max_checkpoints=1, pipeline_name="health")
    assert deleted == [made["health", 1].checkpoint_id, made["health", 0].checkpoint_id]
    assert manager.list_checkpoints("health") == [made["health", 2]]
    assert len(manager.list_checkpoints("seifa")) == 3
    clock.advance(days=8)
    remaining = {m.checkpoint_id for m in manager.list_checkpoints()}
    assert set(manager.cleanup()) == remaining
    assert manager.list_checkpoints() == []
    assert not any(m.file_path.exists() for m in made.values())


def test_delete_checkpoint_removes_the_file_and_the_index_row(manager):
    meta = manager.create_checkpoint("health", "load", [1], format="pickle")
    manager.delete_checkpoint(meta.checkpoint_id)
    assert not meta.file_path.exists() and manager.list_checkpoints() == []


# -- bad input and its messages --------------------------------------------------------------

@pytest.mark.parametrize("call", ["load_checkpoint_by_id", "validate_checkpoint", "delete_checkpoint"])
def test_an_unknown_id_names_the_id_and_the_directory(manager, root, call):
    with pytest.raises(CheckpointNotFound) as err:
        getattr(manager, call)("20240301T093000000000Z-0000")
    assert str(err.value) == (f"no checkpoint with id '20240301T093000000000Z-0000' in {root}; "
                              "see the ones that exist with list_checkpoints()")


def test_no_checkpoint_for_a_stage_names_pipeline_and_stage(manager, root):
    manager.create_checkpoint("health", "extract", 1)
    with pytest.raises(CheckpointNotFound) as err:
        manager.load_checkpoint("health", "transform")
    assert str(err.value) == (
        f"no checkpoint for stage 'transform' of pipeline 'health' in {root}; create one with "
        "create_checkpoint(), or check the names with list_checkpoints()")


def test_a_file_deleted_behind_the_managers_back_names_both_fixes(manager):
    meta = manager.create_checkpoint("health", "transform", {"rows": 1})
    meta.file_path.unlink()
    with pytest.raises(CheckpointCorrupt) as err:
        manager.load_checkpoint("health", "transform")
    assert str(err.value) == (
        f"checkpoint {meta.checkpoint_id!r} of stage 'transform' of pipeline 'health': file "
        f"{meta.file_path} is missing; restore the file from a backup, or drop the checkpoint "
        f"with delete_checkpoint({meta.checkpoint_id!r})")


@pytest.mark.parametrize("data, fmt, message", [
    ({"when": date(2024, 3, 1)}, "json",
     "cannot checkpoint a dict as JSON: data['when'] is a datetime.date, which JSON cannot hold; "
     "use a format that can: CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE"),
    ([{"sa2": "101", "when": date(2024, 3, 1)}], "json",
     "cannot checkpoint a list as JSON: data[0]['when'] is a datetime.date, which JSON cannot hold; "
     "use a format that can: CheckpointFormat.DUCKDB, CheckpointFormat.PARQUET, "
     "CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE"),
    ({"codes": ("101", "102")}, "json",
     "cannot checkpoint a dict as JSON: data['codes'] is a tuple, which JSON cannot hold; "
     "use a format that can: CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE"),
    ({1: "a"}, "json",
     "cannot checkpoint a dict as JSON: data has the key 1, which JSON would turn into a string; "
     "use a format that can: CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE"),
    ({"rows": 3}, "duckdb",
     "cannot checkpoint a dict as DUCKDB: DUCKDB holds tables (a DuckDB relation, a pyarrow Table, "
     "a pandas DataFrame or a non-empty list of dicts); use a format that can: CheckpointFormat.JSON, "
     "CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE"),
    ([{"population": 1}, {"population": "n/a"}], "parquet",
     "cannot checkpoint a list as PARQUET: column 'population' holds number in row 0 and str in row 1, "
     "which DuckDB would store as one type (make the column one type, or pass a pyarrow Table with a "
     "schema); use a format that can: CheckpointFormat.JSON, CheckpointFormat.PICKLE, "
     "CheckpointFormat.COMPRESSED_PICKLE"),
    ([{"regions": {"NSW"}}], "duckdb",
     "cannot checkpoint a list as DUCKDB: column 'regions' holds a value of type set in row 0, which "
     "DuckDB cannot store as such; use a format that can: CheckpointFormat.PICKLE, "
     "CheckpointFormat.COMPRESSED_PICKLE"),
    ([1, (n for n in range(3))], "pickle",
     "cannot checkpoint a list as PICKLE: cannot pickle 'generator' object; no checkpoint format can "
     "hold it; convert it to a table, plain JSON values or a picklable object first"),
], ids=["date in dict", "date in rows", "tuple", "int key", "not a table", "mixed column",
        "set in rows", "generator"])
def test_data_a_format_cannot_hold_is_refused_and_leaves_nothing(manager, root, data, fmt, message):
    with pytest.raises(CheckpointError) as err:
        manager.create_checkpoint("health", "transform", data, format=fmt)
    assert str(err.value) == message
    assert manager.list_checkpoints() == []
    assert [p for p in (root / "health" / "transform").iterdir()] == []


def test_a_relation_cannot_be_pickled_and_the_message_says_what_can(manager):
    with pytest.raises(CheckpointError) as err:
        manager.create_checkpoint("health", "t", duckdb.connect().from_arrow(SA2), format="pickle")
    assert str(err.value).endswith(
        "as PICKLE: cannot pickle 'DuckDBPyConnection' object; use a format that can: "
        "CheckpointFormat.DUCKDB, CheckpointFormat.PARQUET")


def test_a_pandas_object_column_duckdb_would_stringify_is_refused(manager):
    frame = SA2.to_pandas()
    frame["survey"] = [Survey("a", set(), {}), None, None]
    with pytest.raises(CheckpointError) as err:
        manager.create_checkpoint("health", "t", frame, format="duckdb")
    assert str(err.value) == (
        "cannot checkpoint a pandas.DataFrame as DUCKDB: column 'survey' holds a value of type "
        "tests.pipelines.test_checkpointing.Survey in row 0, which DuckDB cannot store as such; use a "
        "format that can: CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE")


@pytest.mark.parametrize("kwargs, message", [
    ({"max_checkpoints": 0}, "max_checkpoints=0 is not allowed; use a whole number of checkpoints to "
     "keep per stage, at least 1 (or None for no limit)"),
    ({"retention_days": -1}, "retention_days=-1 is not allowed; use a positive number of days (or "
     "None to keep checkpoints of any age)"),
    ({"default_format": "zip"}, "default_format='zip' is not a CheckpointFormat; use one of "
     "CheckpointFormat.DUCKDB, CheckpointFormat.PARQUET, CheckpointFormat.JSON, CheckpointFormat.PICKLE, "
     "CheckpointFormat.COMPRESSED_PICKLE"),
])
def test_bad_settings_are_refused(root, kwargs, message):
    with pytest.raises(CheckpointError) as err:
        CheckpointManager(root, **kwargs)
    assert str(err.value) == message


def test_bad_names_and_a_naive_clock_are_refused(root):
    with CheckpointManager(root, clock=lambda: datetime(2024, 3, 1)) as mgr:
        with pytest.raises(CheckpointError) as err:
            mgr.create_checkpoint("", "transform", 1)
        assert str(err.value) == "pipeline_name must be a non-empty string, got ''"
        with pytest.raises(CheckpointError) as err:
            mgr.load_checkpoint("health", None)
        assert str(err.value) == "stage_name must be a non-empty string, got None"
        with pytest.raises(CheckpointError) as err:
            mgr.load_checkpoint_by_id(None)
        assert str(err.value) == "checkpoint_id must be a non-empty string, got None"
        with pytest.raises(CheckpointError) as err:
            mgr.create_checkpoint("health", "transform", 1)
        assert str(err.value) == (
            "the clock returned datetime.datetime(2024, 3, 1, 0, 0), a time without a time zone; pass "
            "a clock that returns aware UTC times, such as lambda: datetime.now(timezone.utc)")


@pytest.mark.parametrize("pipeline, stage", [
    ("../../outside", "../../../etc"), ("/etc", "passwd"), ("..", "."), ("a\\..\\b", "x" * 300),
])
def test_names_cannot_escape_the_checkpoint_directory(manager, tmp_path, root, pipeline, stage):
    meta = manager.create_checkpoint(pipeline, stage, {"x": 1}, format="json")
    assert meta.file_path.resolve().parent.parent.parent == root
    assert list(tmp_path.iterdir()) == [root]
    assert manager.load_checkpoint(pipeline, stage)[0] == {"x": 1}
    assert manager.list_checkpoints(pipeline, stage) == [meta]


def test_names_that_share_a_folder_stay_apart(manager):
    a = manager.create_checkpoint("a/b", "load", "slash", format="json")
    b = manager.create_checkpoint("a_b", "load", "underscore", format="json")
    assert a.file_path.parent == b.file_path.parent
    assert manager.load_checkpoint("a/b", "load")[0] == "slash"
    assert manager.list_checkpoints("a_b") == [b]


# -- concurrency ---------------------------------------------------------------------------

def run_threads(target, count: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_concurrent_creates_from_threads_are_all_indexed(manager):
    def work(n: int) -> None:
        for i in range(5):
            manager.create_checkpoint("health", f"stage-{n}", {"n": n, "i": i}, format="json")

    assert run_threads(work, 6) == []
    found = manager.list_checkpoints()
    assert len(found) == len({m.checkpoint_id for m in found}) == 30
    assert all(manager.validate_checkpoint(m.checkpoint_id).is_valid for m in found)


def test_retention_under_concurrent_creates_leaves_exactly_the_limit(root):
    with CheckpointManager(root, max_checkpoints=3) as mgr:
        def work(n: int) -> None:
            for i in range(5):
                mgr.create_checkpoint("health", "transform", [n, i], format="pickle")

        assert run_threads(work, 6) == []
        found = mgr.list_checkpoints()
        assert len(found) == 3
        assert sorted(p.name for p in (root / "health" / "transform").iterdir()) == \
            sorted(m.file_path.name for m in found)


WORKER = """
import sys
from pipelines.checkpointing import CheckpointManager
with CheckpointManager(sys.argv[1], max_checkpoints=None) as mgr:
    for i in range(10):
        mgr.create_checkpoint("health", "transform", (sys.argv[2], i), format="pickle")
"""


def test_concurrent_creates_from_processes_are_all_indexed(root):
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(w)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for w in range(4)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    with CheckpointManager(root, max_checkpoints=None) as mgr:
        found = mgr.list_checkpoints()
        assert len(found) == 40
        loaded = {mgr.load_checkpoint_by_id(m.checkpoint_id)[0] for m in found}
    assert loaded == {(str(w), i) for w in range(4) for i in range(10)}
