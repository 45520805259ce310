"""ahgd's durable core: events, the pure state machine, the SQLite event log,
its projections, and the DuckDB data store.

Imports nothing from ``pipelines`` or ``ahgd_daemon``.
"""

from .errors import (
    AhgdError,
    DatabaseDamaged,
    DiskFull,
    EventLogError,
    IllegalTransition,
    MigrationFailed,
    OutputMissing,
    SchemaTooNew,
    StateDirError,
    StoreError,
)
from .events import EVENT_TYPES, Event, EventType, new_event
from .log import HISTORY_DB, CheckReport, DuplicateEvent, EventLog
from .machine import (
    AlertRecord,
    Attempt,
    FileRecord,
    Orchestration,
    Run,
    RunState,
    ScheduleRecord,
    StageState,
    aggregate_key,
    apply,
    fold,
)
from .migrations import MIGRATIONS, Migration
from .timestamps import format_ts, parse_ts, utc_now

__all__ = [
    "AhgdError", "DatabaseDamaged", "DiskFull", "EventLogError", "IllegalTransition", "MigrationFailed",
    "OutputMissing", "SchemaTooNew", "StateDirError", "StoreError",
    "EVENT_TYPES", "Event", "EventType", "new_event",
    "HISTORY_DB", "CheckReport", "DuplicateEvent", "EventLog", "format_ts", "parse_ts", "utc_now",
    "AlertRecord", "Attempt", "FileRecord", "Orchestration", "Run", "RunState", "ScheduleRecord", "StageState",
    "aggregate_key", "apply", "fold", "MIGRATIONS", "Migration",
]
