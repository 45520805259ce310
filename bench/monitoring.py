"""What monitoring costs: runs/s through the real daemon with the monitor and HTTP server on vs off.

    python bench/monitoring.py [--files 400] [--rounds 3] [--modes ON,OFF]

The workload is bench/latency.py's throughput figure: ``--files`` small CSV
files moved at once into the drop folder of a 4-stage DuckDB pipeline, run by
``ahgd daemon`` with 2 worker processes; runs/s = completed runs / (first
``file.arrived`` -> last ``run.completed``).  Each round starts a fresh daemon
on a fresh state directory, in one mode; the modes take turns (ON, OFF, ON,
...) after an uncounted warm-up round (OFF, ``--warmup`` files):

  ON       daemon.monitoring {enabled: true, sample_interval: PT1S} (the
           monitor observes every appended event and samples psutil every
           second), and ``--http 127.0.0.1:0``, with a scraper thread here
           fetching /metrics, /api/dashboard and /api/runs?limit=50 once a
           second each (staggered by 1/3 s), like an eager Prometheus plus an
           open dashboard tab;
  OFF      daemon.monitoring {enabled: false} (no observe listener, no
           sampling thread), no --http, no scraper;
  MONITOR  (--modes only) the monitor as in ON, no --http, no scraper;
  HTTP     (--modes only) --http and the scraper, the monitor as in OFF.

Printed per round: runs/s, a run's average time (and the part spent in
workers), CPU per run of the daemon and of its workers, and the CPU other
processes on the machine took meanwhile (a round with much of it is noise).
Then the median of each mode, ON/OFF against the target "monitoring costs
<= 5 % of throughput", and the scraper's request latency (p50/p95 per
endpoint), request count and response sizes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.latency import (DaemonProcess, History, ahgd_command, measure_throughput,  # noqa: E402
                           percentile, wait_for, write_config)

TARGET_COST_PCT = 5.0
MONITORING_ON = {"enabled": True, "sample_interval": "PT1S"}
MONITORING_OFF = {"enabled": False}
#: mode -> (daemon.monitoring, --http with the scraper); MONITOR and HTTP split ON into its parts
MODES = {"ON": (MONITORING_ON, True), "OFF": (MONITORING_OFF, False),
         "MONITOR": (MONITORING_ON, False), "HTTP": (MONITORING_OFF, True)}
ENDPOINTS = ("/metrics", "/api/dashboard", "/api/runs?limit=50")


# --------------------------------------------------------------------------- the scraper


class Scraper:
    """A thread that GETs each endpoint once per ``period``, staggered, until stopped.

    Bounded: it stops by itself after ``max_seconds``.  Records each request's
    latency (connect to last byte), its size and any status other than 200.
    """

    def __init__(self, port: int, period: float = 1.0, max_seconds: float = 900.0):
        self.port, self.period, self.max_seconds = port, period, max_seconds
        self.latency: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
        self.size: dict[str, list[int]] = {e: [] for e in ENDPOINTS}
        self.errors: Counter = Counter()
        self.late = 0            # ticks that came after the next one was due (the server was slow)
        self.cpu_s = 0.0         # this thread's own CPU time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latency.values()) + sum(self.errors.values())

    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            self._loop()
        finally:
            self.cpu_s = time.thread_time() - cpu0

    def _loop(self) -> None:
        step = self.period / len(ENDPOINTS)
        deadline = time.monotonic() + self.max_seconds
        due, i = time.monotonic(), 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._fetch(ENDPOINTS[i % len(ENDPOINTS)])
            i += 1
            due += step
            now = time.monotonic()
            if due < now:       # fell behind: go on from now rather than burst to catch up
                self.late += 1
                due = now
            self._stop.wait(due - now)

    def _fetch(self, path: str) -> None:
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.errors[f"{path}: {type(exc).__name__}"] += 1
            return
        finally:
            conn.close()
        elapsed = (time.perf_counter() - t0) * 1e3
        if resp.status != 200:
            self.errors[f"{path}: HTTP {resp.status}"] += 1
            return
        self.latency[path].append(elapsed)
        self.size[path].append(len(body))


def http_port(log_path: Path, timeout: float = 10.0) -> int:
    """The port of the status server, from the daemon's ``http_status`` JSON log line."""

    def find() -> int | None:
        for line in log_path.read_text().splitlines():
            if '"http_status"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "http_status":
                return int(record["port"])
        return None

    return wait_for(find, timeout, 0.05, f"the http_status line in {log_path}")


# --------------------------------------------------------------------------- one round


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """User + system CPU seconds of these processes, summed (one that has gone counts 0)."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent on anything but idling (steal included)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) \
        - getattr(t, "guest_nice", 0.0)


def run_round(root: Path, number: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh daemon on a fresh state directory, the throughput workload, the daemon stopped."""
    monitoring, http = MODES[mode]
    rdir = root / f"round-{number}-{mode.lower()}"
    rdir.mkdir()
    state = rdir / "state"
    config = write_config(rdir, args.workers, monitoring)
    daemon = DaemonProcess(config, state, rdir / "daemon.log",
                           ("--http", "127.0.0.1:0") if http else ())
    history = scraper = None
    try:
        daemon.wait_ready(60)
        time.sleep(0.5)   # let the worker pool and the first sample settle
        history = History(state)
        if http:
            scraper = Scraper(http_port(daemon.log_path), max_seconds=args.timeout + 60)
            scraper.start()
        main = psutil.Process(daemon.proc.pid)
        workers = main.children(recursive=True)
        ours = [main, *workers, psutil.Process()]
        t0, busy0 = time.monotonic(), machine_busy_seconds()
        cpu0, wcpu0, ours0 = cpu_seconds([main]), cpu_seconds(workers), cpu_seconds(ours)
        thr = measure_throughput(history, state / "inbox" / "throughput", rdir / "staging",
                                 args.files, args.rows, args.timeout)
        cpu, wcpu = cpu_seconds([main]) - cpu0, cpu_seconds(workers) - wcpu0
        others = (machine_busy_seconds() - busy0) - (cpu_seconds(ours) - ours0)
        others_pct = 100.0 * max(others, 0.0) / (time.monotonic() - t0)
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not orphan it
        try:
            if scraper is not None:
                scraper.stop()
            if history is not None:
                history.close()
            code = daemon.stop()
        finally:
            signal.signal(signal.SIGINT, previous)
    if code not in (0, None):
        print(f"   (round {number} {mode}: the daemon exited with code {code}; see --keep)")
    if not args.keep:
        shutil.rmtree(rdir, ignore_errors=True)
    rate = thr["completed"] / thr["elapsed"] if thr["elapsed"] > 0 else float("nan")
    in_workers = sum(wall for _, _, wall, *_ in thr["stages"])  # a run's stages, averages summed
    result = {"number": number, "mode": mode, "rate": rate, "cpu_s": cpu, "workers_cpu_s": wcpu,
              "stages_s": in_workers, "others_pct": others_pct, "scraper": scraper, **thr}
    print_round(result)
    return result


# --------------------------------------------------------------------------- report


def print_round(r: dict[str, Any]) -> None:
    scraper: Scraper | None = r["scraper"]
    scrapes = f"  {scraper.requests:4d} requests" if scraper else ""
    if scraper and (scraper.errors or scraper.late):
        scrapes += f" ({sum(scraper.errors.values())} errors, {scraper.late} late)"
    problems = f"   {r['failed']} failed, {r['lost']} not run" if r["failed"] or r["lost"] else ""
    n = max(r["completed"], 1)
    print(f"   {r['number'] or 'warm-up':>7}  {r['mode']:<7} {r['completed']:5d} runs in "
          f"{r['elapsed']:6.2f} s {r['rate']:6.1f} runs/s   a run {r['run_avg_s'] * 1e3:5.0f} ms"
          f" ({r['stages_s'] * 1e3:3.0f} in workers)   CPU per run: daemon "
          f"{r['cpu_s'] / n * 1e3:5.1f} ms, workers {r['workers_cpu_s'] / n * 1e3:5.0f} ms;"
          f" other processes {r['others_pct']:3.0f} % of a core{scrapes}{problems}", flush=True)


def report(results: list[dict[str, Any]], modes: list[str]) -> None:
    rates = {m: [r["rate"] for r in results if r["mode"] == m] for m in modes}
    medians = {m: statistics.median(v) for m, v in rates.items()}
    print()
    for m in modes:
        spread = 100.0 * (max(rates[m]) - min(rates[m])) / medians[m]
        vs = f"   {m}/OFF = {medians[m] / medians['OFF']:.3f}" if m != "OFF" else ""
        print(f"median {m:<7} {medians[m]:6.1f} runs/s   (rounds {min(rates[m]):.1f} .. "
              f"{max(rates[m]):.1f}, spread {spread:4.1f} % of the median){vs}")
    if "ON" in modes:
        ratio = medians["ON"] / medians["OFF"]
        cost = 100.0 * (1.0 - ratio)
        print(f"ON / OFF = {ratio:.3f}: monitoring costs {cost:.1f} % of throughput   "
              f"target: monitoring costs <= {TARGET_COST_PCT:g} % of throughput   "
              f"{'ok' if cost <= TARGET_COST_PCT else 'OVER'}")
    print_cpu_estimate(results, modes)
    for m in modes:
        if any(r["scraper"] for r in results if r["mode"] == m):
            print_scraper(m, [r for r in results if r["mode"] == m])


def print_cpu_estimate(results: list[dict[str, Any]], modes: list[str]) -> None:
    """The same cost from CPU per run, which round-to-round speed changes of the machine move less.

    With both cores busy, throughput goes as 1 / (CPU per run): the extra CPU a
    mode spends per run in the daemon (and in the scraper) over what OFF spends
    per run in the daemon and its workers is the share of throughput it costs.
    """
    def per_run(mode: str, key: str) -> float:
        return statistics.median(r[key] / r["completed"] for r in results
                                 if r["mode"] == mode and r["completed"])

    base = per_run("OFF", "cpu_s") + per_run("OFF", "workers_cpu_s")
    print(f"\nCPU per run, medians (OFF: daemon {per_run('OFF', 'cpu_s') * 1e3:.1f} ms + workers "
          f"{per_run('OFF', 'workers_cpu_s') * 1e3:.0f} ms):")
    for m in modes:
        if m == "OFF":
            continue
        extra = per_run(m, "cpu_s") - per_run("OFF", "cpu_s")
        scraper = statistics.median(r["scraper"].cpu_s / r["completed"] for r in results
                                    if r["mode"] == m and r["completed"]) if MODES[m][1] else 0.0
        print(f"   {m:<7} daemon {extra * 1e3:+.2f} ms, scraper {scraper * 1e3:.2f} ms: an estimated "
              f"{100.0 * (extra + scraper) / base:.1f} % of throughput")


def print_scraper(mode: str, rounds: list[dict[str, Any]]) -> None:
    scrapers: list[Scraper] = [r["scraper"] for r in rounds]
    seconds = sum(r["elapsed"] for r in rounds)
    print(f"\nscraper ({mode} rounds): {sum(s.requests for s in scrapers)} requests in "
          f"{len(scrapers)} rounds ({seconds:.0f} s of measured work; each endpoint once a second),"
          f" its own CPU {sum(s.cpu_s for s in scrapers):.1f} s")
    print("   endpoint              n   p50 ms   p95 ms   max ms   size (median)")
    for path in ENDPOINTS:
        lat = [x for s in scrapers for x in s.latency[path]]
        size = [x for s in scrapers for x in s.size[path]]
        if not lat:
            print(f"   {path:<19} {0:4d}   (no answer)")
            continue
        print(f"   {path:<19} {len(lat):4d} {percentile(lat, 50):8.1f} {percentile(lat, 95):8.1f}"
              f" {max(lat):8.1f}   {statistics.median(size) / 1024:8.1f} KiB")
    errors = sum((s.errors for s in scrapers), Counter())
    late = sum(s.late for s in scrapers)
    if errors or late:
        print(f"   errors: {dict(errors) or 'none'}; {late} requests started late "
              f"(the one before took longer than 1/3 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--files", type=int, default=400,
                    help="files dropped at once in each round (default 400)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of each mode, the modes taking turns (default 3)")
    ap.add_argument("--modes", default="ON,OFF",
                    help="modes in the order they take turns, OFF among them: ON, OFF, MONITOR "
                         "(monitoring on, no --http) and HTTP (--http and the scraper, monitoring "
                         "off) (default ON,OFF)")
    ap.add_argument("--warmup", type=int, default=50,
                    help="files of a first OFF round that is shown but not counted; 0 skips it "
                         "(default 50)")
    ap.add_argument("--rows", type=int, default=20, help="rows per CSV file (default 20)")
    ap.add_argument("--workers", type=int, default=2, help="the daemon's max_workers (default 2)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="give up waiting for a round's runs after this many seconds (default 600)")
    ap.add_argument("--dir", default=os.getcwd(),
                    help="directory on the disk to use; a temp dir is made inside it and removed "
                         "afterwards (default: the current directory)")
    ap.add_argument("--keep", action="store_true",
                    help="keep each round's directory (state, daemon.log) for inspection")
    args = ap.parse_args()
    if args.files < 1 or args.rounds < 1 or args.workers < 1 or args.warmup < 0:
        ap.error("--files, --rounds and --workers must be 1 or more, --warmup 0 or more")
    modes = [m.strip().upper() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or "OFF" not in modes or len(set(modes)) != len(modes):
        ap.error(f"--modes {args.modes!r}: give each of {', '.join(MODES)} at most once, "
                 "OFF among them, e.g. --modes ON,OFF")
    root = Path(tempfile.mkdtemp(prefix="ahgd-bench-monitoring-", dir=args.dir))
    results: list[dict[str, Any]] = []
    try:
        print(f"disk: {root}   {os.cpu_count()} CPUs   load average {os.getloadavg()[0]:.2f}")
        print(f"{' '.join(ahgd_command())} daemon ..., {args.workers} worker processes, "
              f"{args.files} files of {args.rows} rows per round, 4-stage pipeline")
        for m in modes:
            monitoring, http = MODES[m]
            print(f"   {m:<7} daemon.monitoring {json.dumps(monitoring)}"
                  + (f", --http 127.0.0.1:0, scraper on {', '.join(ENDPOINTS)} once a second each"
                     if http else ""))
        print("\n     round  mode")
        t0 = time.monotonic()
        if args.warmup > 0:  # the first daemon pays for cold caches: let no measured round do it
            run_round(root, 0, "OFF", argparse.Namespace(**{**vars(args), "files": args.warmup}))
        for i in range(args.rounds * len(modes)):
            results.append(run_round(root, i + 1, modes[i % len(modes)], args))
        report(results, modes)
        print(f"\n{len(results)} rounds in {time.monotonic() - t0:.0f} s; "
              f"load average now {os.getloadavg()[0]:.2f}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
