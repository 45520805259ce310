"""The terminal view of ``ahgd status``: the dashboard document drawn with rich.

``render_status`` takes the ``GET /api/dashboard`` document (see
``PipelineMonitor.get_dashboard_data``) and prints four sections — active runs,
open alerts, last runs per pipeline, system figures — under a header line about
the daemon.  Every figure may be null or missing; an empty section says "none".
Relative times are measured from the document's ``generated_at``, never from
the wall clock, so the same document always renders the same text.

Text from the event log (errors, alert messages, run ids) is wrapped in
``rich.text.Text`` so brackets in it are shown, not parsed as markup.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Iterable

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from state import RunState, parse_ts

RUN_STATE_STYLES = {
    RunState.COMPLETED: "green",
    RunState.FAILED: "red",
    RunState.PARKED: "magenta",
    RunState.CANCELLED: "yellow",
    RunState.RUNNING: "blue",
    RunState.PENDING: "cyan",
}
SEVERITY_STYLES = {"info": "cyan", "warning": "yellow", "error": "red", "critical": "bold white on red"}
_SEVERITY_RANK = {"critical": 0, "error": 1, "warning": 2, "info": 3}
BAR_WIDTH = 12
ERROR_MAX_CHARS = 160  # longest first line of an error shown, before the terminal's own width cuts it


def render_status(dashboard: dict[str, Any], *, console: Console, recent: int = 5,
                  state_dir: str | None = None) -> None:
    """Print the dashboard document: header, active runs, open alerts, last runs, system."""
    _View(dashboard, console, recent, state_dir).render()


class _View:
    def __init__(self, dashboard: dict[str, Any], console: Console, recent: int,
                 state_dir: str | None):
        self.doc = dashboard if isinstance(dashboard, dict) else {}
        self.console = console
        self.recent = max(0, recent)
        self.state_dir = state_dir
        self.now = _parse_ts(self.doc.get("generated_at"))
        utf = (console.encoding or "").lower().startswith("utf")
        self.dash, self.more, self.sep = ("\u2014", "\u2026", " \u00b7 ") if utf else ("-", "...", "; ")

    def render(self) -> None:
        self.header()
        self.paused()
        self.active_runs()
        self.open_alerts()
        self.last_runs()
        self.system()
        self.storage()

    # -- sections -----------------------------------------------------------

    def header(self) -> None:
        daemon = self.doc.get("daemon")
        queue = _mapping(self.doc.get("queue"))
        queue_line = (f"queue {_num(queue.get('pending_runs'))} pending, "
                      f"{_num(queue.get('running_runs'))} running, {_num(queue.get('parked_runs'))} parked")
        if not isinstance(daemon, dict):
            where = self.state_dir or "this state directory"
            self.line(Text(f"no daemon running on {where} {self.dash} history only", style="bold yellow"))
            self.line(Text(f"{queue_line} (as recorded in the event log)"))
            return
        first = Text(f"ahgd daemon pid {_num(daemon.get('pid'))}", style="bold")
        first.append(f" on {daemon.get('state_dir') or self.state_dir or '?'}, "
                     f"up {_duration(daemon.get('uptime_s'), self.dash)}")
        if daemon.get("recovering"):
            first.append(" (recovering)", style="yellow")
        elif daemon.get("healthy") is False:
            first.append(" (unhealthy)", style="bold red")
        self.line(first)
        workers = _mapping(daemon.get("workers"))
        busy = f"workers {_num(workers.get('busy'))}/{_num(workers.get('max'))} busy"
        self.line(Text(self.sep.join([busy, queue_line, f"{_num(daemon.get('files_waiting'))} files waiting"])))
        self.cluster(_mapping(daemon.get("cluster")))

    def cluster(self, cluster: dict[str, Any]) -> None:
        """Where attempts run with ``executor: dask``: the scheduler, connected or not, the
        bucket, and each worker with what it offers and runs (the status page's ``cluster``)."""
        if not cluster:
            return
        workers = _dicts(cluster.get("workers"))
        line = Text(f"Dask cluster {cluster.get('scheduler') or '?'} ")
        if cluster.get("connected"):
            line.append("connected", style="green")
            line.append(f"{self.sep}{len(workers)} worker{'' if len(workers) == 1 else 's'}")
        else:
            line.append("LOST", style="bold red")
        line.append(f"{self.sep}outputs in {cluster.get('object_store') or '?'}")
        self.line(line, clip=True)
        for w in workers:
            offers = ", ".join(f"{k}={v:g}" if _is_number(v) else f"{k}={v}"
                               for k, v in _mapping(w.get("resources")).items()) or "no resources"
            running = ", ".join(str(r) for r in w.get("running") or ()) or "idle"
            self.line(Text(f"  {w.get('address') or '?'} on {w.get('host') or '?'}: "
                           f"{_num(w.get('nthreads'))} threads, {offers}; {running}"), clip=True)

    def active_runs(self) -> None:
        runs = _dicts(self.doc.get("active_runs"))
        more = self.doc.get("active_runs_not_shown")
        more = more if isinstance(more, int) and more > 0 else 0
        self.heading("Active runs", len(runs) + more)
        if not runs:
            self.none()
            return
        table = _table("Run", "Pipeline", "Stage*", "Progress", ">Done", ">Elapsed")
        for run in runs:
            pct = _progress(run)
            table.add_row(
                Text(str(run.get("run_id") or "?")),
                Text(str(run.get("pipeline") or "?")),
                self.stage_cell(run),
                ProgressBar(total=100.0, completed=pct, width=BAR_WIDTH,
                            complete_style="blue", finished_style="green"),
                Text(f"{_num(run.get('stages_done'))}/{_num(run.get('stages_total'))} {pct:.0f}%"),
                Text(self.elapsed(run)),
            )
        self.console.print(Padding(table, (0, 0, 0, 2), expand=False))
        if more:
            self.line(Text(f"and {more} more queued (the oldest are shown)"))
        for run in runs:
            gone = _mapping(run.get("owner_gone"))
            if gone:
                self.line(Text(f"  {run.get('run_id')}: {gone.get('text') or 'owner gone'} "
                               f"{self.dash} nobody is running it; `ahgd retry "
                               f"{run.get('run_id')}` resumes it", style="bold red"))

    def open_alerts(self) -> None:
        alerts = _dicts(_mapping(self.doc.get("alerts")).get("open"))
        self.heading("Open alerts", len(alerts))
        if not alerts:
            self.none()
            return
        alerts.sort(key=lambda a: _SEVERITY_RANK.get(str(a.get("severity")), 9))
        table = _table("Severity", "Name", "Message*", ">Since")
        for alert in alerts:
            severity = str(alert.get("severity") or "?")
            table.add_row(
                Text(severity.upper(), style=SEVERITY_STYLES.get(severity, "")),
                Text(str(alert.get("name") or alert.get("id") or "?")),
                Text(str(alert.get("message") or "")),
                Text(self.ago(alert.get("raised_at"))),
            )
        self.console.print(Padding(table, (0, 0, 0, 2), expand=False))

    def paused(self) -> None:
        """Pipelines paused by hand (``ahgd pause``): who, when, why; only when there are."""
        paused = _mapping(self.doc.get("paused"))
        if not paused:
            return
        from .pausing import describe

        self.heading("Paused pipelines", len(paused))
        for name, pause in sorted(paused.items()):
            self.line(Text(f"  {name}: {describe(_mapping(pause))}; its runs wait "
                           f"(`ahgd resume {name}`)"))

    def last_runs(self) -> None:
        by_pipeline = _mapping(self.doc.get("recent_runs"))
        groups = [(str(name), _dicts(runs)[: self.recent])
                  for name, runs in sorted(by_pipeline.items(), key=lambda kv: str(kv[0]))]
        groups = [(name, runs) for name, runs in groups if runs]
        self.heading("Last runs", sum(len(runs) for _, runs in groups))
        if not groups:
            self.none()
            return
        for name, runs in groups:
            self.line(Text(f"  {name}", style="bold"))
            id_width = max(len(str(r.get("run_id") or "?")) for r in runs)
            for run in runs:
                self.run_line(run, id_width)

    def system(self) -> None:
        system = self.doc.get("system")
        self.heading("System")
        if not isinstance(system, dict):
            self.none()
            return
        limits = _mapping(self.doc.get("thresholds"))
        figures = Text("  ")
        figures.append_text(_percent("CPU", system.get("cpu_percent"), limits.get("cpu_percent")))
        figures.append("   ")
        figures.append_text(_percent("memory", system.get("memory_percent"), limits.get("memory_percent")))
        figures.append(f"   daemon RSS {_mb(system.get('process_rss_mb'))}, "
                       f"CPU time {_duration(system.get('process_cpu_s'), self.dash)}")
        self.line(figures)
        for disk in _dicts(system.get("disks")):
            text = Text("  ")
            text.append_text(_percent(f"disk {disk.get('path') or '?'}", disk.get("percent"),
                                      limits.get("disk_percent")))
            text.append(f" ({_bytes(disk.get('free_bytes'))} free)")
            self.line(text)
        self.workers(_dicts(system.get("workers")))

    def storage(self) -> None:
        """The state directory by area, and what the last collection freed (retention)."""
        doc = _mapping(self.doc.get("storage"))
        if not doc:
            return
        areas = _mapping(doc.get("areas"))
        self.heading("State directory")
        measured = doc.get("measured_at")  # the daemon's sizes are those of its last collection
        self.line(Text(f"  {_bytes(doc.get('total_bytes'))}: " + ", ".join(
            f"{area} {_bytes(size)}" for area, size in areas.items()
            if area in ("data", "history") or (_is_number(size) and size > 0))
            + (f" (measured {self.ago(measured)})" if measured else "")), clip=True)
        last = _mapping(doc.get("last_collection"))
        if last:
            self.line(Text(f"  last collection {self.ago(last.get('at'))}: removed "
                           f"{_num(last.get('items'))}, freed {_bytes(last.get('bytes'))}"))
        else:
            self.line(Text("  nothing removed by retention yet", style="dim"))
        if _is_number(doc.get("over_budget_bytes")):
            self.line(Text(f"  data/ is {_bytes(doc['over_budget_bytes'])} over retain.data_budget",
                           style="bold red"))

    # -- pieces -------------------------------------------------------------

    def workers(self, workers: list[dict[str, Any]]) -> None:
        if not workers:
            self.line(Text("  workers: none"))
            return
        table = _table(">Worker pid", "Run", "Stage*", ">RSS", ">CPU")
        for w in workers:
            cpu = w.get("cpu_percent")
            table.add_row(Text(_num(w.get("pid"))), Text(str(w.get("run_id") or self.dash)),
                          Text(str(w.get("stage") or self.dash)), Text(_mb(w.get("rss_mb"))),
                          Text(self.dash if not _is_number(cpu) else f"{cpu:.0f}%"))
        self.console.print(Padding(table, (0, 0, 0, 2), expand=False))

    def run_line(self, run: dict[str, Any], id_width: int) -> None:
        state = str(run.get("state") or "?")
        gone = _mapping(run.get("owner_gone"))
        if gone:  # RUNNING in the log, but its process was killed
            state = f"{state} ({gone.get('text') or 'owner gone'})"
        when = run.get("ended_at") or run.get("started_at") or run.get("requested_at")
        text = Text("    ")
        text.append(f"{state:<9}", style="bold red" if gone else RUN_STATE_STYLES.get(state, ""))
        text.append(f"  {str(run.get('run_id') or '?'):<{id_width}}  {self.ago(when):>12}"
                    f"  took {_duration(run.get('duration_s'), self.dash)}")
        self.console.print(text, soft_wrap=True)  # one line per run, even in a narrow pipe
        failure = self.failure(run)
        if failure:
            self.line(Text(f"      {failure}", style="red"), clip=True)

    def failure(self, run: dict[str, Any]) -> str:
        stage, error = run.get("failed_stage"), _first_line(run.get("error"))
        if not stage and not error:
            return ""
        where = f"failed at stage {stage!r}" if stage else "failed"
        if error and len(error) > ERROR_MAX_CHARS:
            error = error[: ERROR_MAX_CHARS - len(self.more)].rstrip() + self.more
        return f"{where}: {error}" if error else where

    def stage_cell(self, run: dict[str, Any]) -> Text:
        stage = run.get("current_stage")
        if not stage:
            return Text("queued" if run.get("state") == RunState.PENDING else self.dash)
        attempt = next((s.get("attempt") for s in _dicts(run.get("stages")) if s.get("stage") == stage), None)
        label = f"{stage} (try {attempt})" if _is_number(attempt) and attempt > 1 else str(stage)
        return Text(label)

    def elapsed(self, run: dict[str, Any]) -> str:
        elapsed = run.get("elapsed_s")
        if not _is_number(elapsed):
            started = _parse_ts(run.get("started_at"))
            elapsed = (self.now - started).total_seconds() if started and self.now else None
        return _duration(elapsed, self.dash)

    def ago(self, ts: Any) -> str:
        when = _parse_ts(ts)
        if when is None:
            return self.dash
        if self.now is None:
            return when.strftime("%Y-%m-%d %H:%M:%SZ")
        seconds = (self.now - when).total_seconds()
        return "just now" if seconds < 1 else f"{_duration(seconds, self.dash)} ago"

    def heading(self, title: str, count: int | None = None) -> None:
        self.console.print()
        self.line(Text(title if count is None else f"{title} ({count})", style="bold underline"))

    def none(self) -> None:
        self.line(Text("  none", style="dim"))

    def line(self, text: Text, *, clip: bool = False) -> None:
        """One line of text; ``clip`` cuts it at the terminal width with an ellipsis instead of wrapping."""
        if clip and text.cell_len > self.console.width:
            text.truncate(max(1, self.console.width - len(self.more)))
            text.append(self.more)
        self.console.print(text, soft_wrap=False)


# -- formatting helpers (pure) ----------------------------------------------


def _table(*columns: str) -> Table:
    """A borderless table under a rule; ``>name`` right-aligns, ``name*`` may wrap (others never do)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1),
                  collapse_padding=True)
    for column in columns:
        name = column.strip(">*")
        table.add_column(name, justify="right" if column.startswith(">") else "left",
                         no_wrap=not column.endswith("*"))
    return table


def _duration(seconds: Any, missing: str = "-") -> str:
    """``3.2s``, ``1m 05s``, ``2h 03m``, ``4d 07h``; ``missing`` for null or nonsense."""
    if not _is_number(seconds) or seconds < 0:
        return missing
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def _parse_ts(value: Any) -> datetime | None:
    """An ISO 8601 timestamp ("...Z") as an aware UTC datetime; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_ts(value)
    except ValueError:
        return None


def _first_line(error: Any) -> str:
    """The line of an error worth reading: the first, or a traceback's last."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0]


def _progress(run: dict[str, Any]) -> float:
    pct = run.get("progress_percentage")
    if not _is_number(pct):
        done, total = run.get("stages_done"), run.get("stages_total")
        pct = 100.0 * done / total if _is_number(done) and _is_number(total) and total > 0 else 0.0
    return float(min(100.0, max(0.0, pct)))


def _percent(label: str, value: Any, limit: Any) -> Text:
    if not _is_number(value):
        return Text(f"{label} ?%")
    over = _is_number(limit) and value >= limit
    text = Text(f"{label} ")
    text.append(f"{value:.1f}%", style="bold red" if over else "")
    return text


def _mb(value: Any) -> str:
    return f"{value:.1f} MB" if _is_number(value) else "? MB"


def _bytes(value: Any) -> str:
    if not _is_number(value):
        return "?"
    if value < 1024:
        return f"{value:.0f} B"
    size, unit = value / 1024, "KB"
    for bigger in ("MB", "GB", "TB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def _num(value: Any) -> str:
    return str(value) if _is_number(value) else "?"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dicts(items: Any) -> list[dict[str, Any]]:
    """The dict elements of a list that should hold dicts (null, missing or junk -> [])."""
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes, dict)):
        return []
    return [item for item in items if isinstance(item, dict)]


def _mapping(value: Any) -> dict[str, Any]:
    """A dict-valued key of the document; null or junk reads as empty."""
    return value if isinstance(value, dict) else {}
