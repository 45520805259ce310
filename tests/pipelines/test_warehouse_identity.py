"""The warehouse's identity: every load reports it, and a lost warehouse is noticed (issue 11, item 3).

The bundled ``seifa_sa2`` pipeline loads the real SEIFA file into a real
``warehouse.duckdb`` in a temp state directory; the warehouse is deleted,
replaced or overwritten between runs, and the next load must record
``warehouse.lost`` (the alert of that name, in the ``alerts`` projection).
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from pipelines.ahgd import seifa
from pipelines.config.configured import load_pipeline
from state import EventLog

CONFIG = Path(seifa.__file__).resolve().parent / "config"


def run_seifa(state: Path):
    ctx = load_pipeline(CONFIG / "seifa_sa2.yaml", state_dir=state, executor="inprocess").run()
    return ctx


def reports(state: Path, run_id: str) -> list[dict]:
    with EventLog.open(state) as log:
        return [r for e in log.events(run_id=run_id) if e.type == "stage.completed"
                for r in e.payload.get("warehouses") or ()]


def losses(state: Path) -> list[dict]:
    with EventLog.open(state) as log:
        return [json.loads(r[0]) for r in log.query(
            "SELECT payload FROM events WHERE type = 'warehouse.lost' ORDER BY seq")]


def alert(state: Path) -> tuple | None:
    with EventLog.open(state) as log:
        rows = log.query("SELECT name, severity, state, message FROM alerts WHERE alert_id = "
                         "'warehouse.lost:warehouse.duckdb'")
        return tuple(rows[0]) if rows else None


def marker(state: Path) -> str:
    con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute("SELECT warehouse_id FROM _ahgd.identity").fetchall()[0][0]
    finally:
        con.close()


def test_each_load_reports_the_warehouse_it_found_and_the_first_one_makes_its_identity(state_dir):
    first = run_seifa(state_dir)
    assert first.state == "COMPLETED", first.error
    [made] = reports(state_dir, first.run_id)
    assert made["path"] == "warehouse.duckdb" and made["created"] is True
    assert made["created_by"] == first.run_id and made["id"] == marker(state_dir)
    second = run_seifa(state_dir)
    [found] = reports(state_dir, second.run_id)
    assert (found["id"], found["created"]) == (made["id"], False)
    assert losses(state_dir) == [] and alert(state_dir) is None


def test_a_load_into_a_deleted_warehouse_records_the_loss_and_raises_its_alert(state_dir):
    first = run_seifa(state_dir)
    old = reports(state_dir, first.run_id)[0]["id"]
    (state_dir / "warehouse.duckdb").unlink()
    second = run_seifa(state_dir)
    assert second.state == "COMPLETED", second.error
    [lost] = losses(state_dir)
    fields = lost["fields"]
    assert fields["expected"]["id"] == old and fields["expected"]["run_id"] == first.run_id
    assert fields["found"]["created"] is True and fields["found"]["id"] == marker(state_dir) != old
    assert str(state_dir / "warehouse.duckdb") in lost["message"]
    assert "ahgd warehouse rebuild" in lost["message"] and second.run_id in lost["message"]
    name, severity, state, message = alert(state_dir)
    assert (name, severity, state, message) == ("warehouse.lost", "error", "FIRING", lost["message"])
    third = run_seifa(state_dir)  # the new warehouse is the one on record now: no new loss
    assert third.state == "COMPLETED" and len(losses(state_dir)) == 1
    with EventLog.open(state_dir) as log:
        assert log.check().ok, log.check().differences


def test_a_warehouse_replaced_by_another_duckdb_file_is_not_taken_for_the_one_on_record(state_dir):
    first = run_seifa(state_dir)
    target = state_dir / "warehouse.duckdb"
    target.unlink()
    con = duckdb.connect(str(target))  # someone's copy of another warehouse, no marker
    con.execute("CREATE TABLE notes AS SELECT 1 AS n")
    con.close()
    second = run_seifa(state_dir)
    assert second.state == "COMPLETED", second.error
    [lost] = losses(state_dir)
    assert "is not the one on record" in lost["message"]
    assert lost["fields"]["found"].get("marked") is True  # an identity written into it now
    assert lost["fields"]["expected"]["id"] == reports(state_dir, first.run_id)[0]["id"]
    assert alert(state_dir)[2] == "FIRING"


def test_a_warehouse_that_is_no_duckdb_file_fails_the_load_naming_the_file_and_the_fix(state_dir):
    run_seifa(state_dir)
    target = state_dir / "warehouse.duckdb"
    target.write_text("sa2_code,irsd\n101021007,1024\n")  # overwritten by a careless export
    ctx = run_seifa(state_dir)
    assert ctx.state == "FAILED" and ctx.failed_stage == "load"
    assert f"the warehouse {target} is not a readable DuckDB database" in ctx.error
    assert f"mv {target} {target}.damaged" in ctx.error and "ahgd warehouse rebuild" in ctx.error
    assert "Traceback" not in ctx.error and "IOException" not in ctx.error.split("(")[0]
    with EventLog.open(state_dir) as log:
        detail = log.run(ctx.run_id).attempts["load"].info()
    assert detail["error_type"] == "WarehouseDamaged" and detail["retryable"] is False
    assert not detail.get("bad_input")  # not the input's fault: it is never quarantined
    [lost] = losses(state_dir)
    assert lost["fields"]["found"]["error"] and "mv " in lost["message"]
    assert alert(state_dir)[2] == "FIRING"
    assert target.read_text().startswith("sa2_code,irsd")  # nothing was written over it


class Lines:
    """A logger that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append((level, event, fields))


def test_the_monitor_opens_the_alert_a_warehouse_lost_event_raised_and_never_records_it_twice(
        state_dir):
    from pipelines.monitoring import PipelineMonitor
    from state import warehouse

    lines = Lines()
    with EventLog.open(state_dir) as log:
        monitor = PipelineMonitor(state_dir / "metrics", enable_system_monitoring=False,
                                  event_log=log, logger=lines)
        log.add_listener(monitor.observe)
        lost = warehouse.lost_event("warehouse.duckdb", "the warehouse is gone", {"id": "a1"},
                                    {"exists": False}, "a test")
        log.append(lost)
        log.append(lost)  # seen again while it fires: the same condition
        [alert] = monitor.open_alerts()
        assert (alert.id, alert.name, alert.severity.value) == (
            "warehouse.lost:warehouse.duckdb", "warehouse.lost", "error")
        assert [(lvl, ev) for lvl, ev, f in lines.lines if f.get("alert")] == [
            ("error", "warehouse.lost")]
        types = [r[0] for r in log.query("SELECT type FROM events ORDER BY seq")]
        assert types == ["warehouse.lost", "warehouse.lost"]  # no alert.raised beside them
        assert [tuple(r) for r in log.query("SELECT state, times_raised FROM alerts")] == [
            ("FIRING", 1)]
        monitor.resolve_alert(alert.id, "the warehouse was rebuilt")
        assert [tuple(r) for r in log.query("SELECT state, resolution FROM alerts")] == [
            ("RESOLVED", "the warehouse was rebuilt")]
        log.append(lost)  # lost again later: a new raise
        assert [tuple(r) for r in log.query("SELECT state, times_raised FROM alerts")] == [
            ("FIRING", 2)]
        seeded = PipelineMonitor(state_dir / "metrics", enable_system_monitoring=False,
                                 event_log=log, logger=Lines())
        assert [a.id for a in seeded.open_alerts()] == ["warehouse.lost:warehouse.duckdb"]
        assert log.check().ok
