"""After a SIGKILL, the warehouse holds the source file's values: every one is compared.

The bundled ``seifa_sa2`` pipeline runs in the real daemon on SEIFA-shaped files
whose columns come in an order that alphabetical sorting would scramble (IRSD
before IRSAD); the daemon is killed while the run is in flight, restarted, and
every loaded value is compared with the file it came from.
"""

from __future__ import annotations

import csv
import random
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from .harness import REPO, Daemon, ahgd_exe, env, query, wait_until

pytestmark = pytest.mark.slow

BUNDLED = REPO / "pipelines" / "ahgd" / "config"
SEIFA = REPO / "pipelines" / "ahgd" / "data" / "seifa_2021_sa2.csv"
#: column orders a sorted mapping would get wrong; the first swaps IRSD and IRSAD exactly
ORDERS = [
    ("irsd_decile", "irsd_score", "irsad_decile", "irsad_score", "sa2_code_2021",
     "sa2_name_2021", "usual_resident_population"),
    ("usual_resident_population", "ieo_score", "ier_score", "irsd_score", "irsad_score",
     "sa2_name_2021", "sa2_code_2021", "irsd_decile", "ieo_decile", "ier_decile", "irsad_decile"),
    ("sa2_code_2021", "irsd_score", "irsd_decile", "ier_score", "ier_decile", "irsad_score",
     "irsad_decile", "sa2_name_2021"),
]


def seifa_file(path: Path, order: tuple[str, ...], rows: int, seed: int) -> list[dict[str, str]]:
    """A SEIFA-shaped CSV of ``rows`` areas built from the real file, its columns in ``order``."""
    real = list(csv.DictReader(SEIFA.open(newline="", encoding="utf-8")))
    rng = random.Random(seed)
    written = []
    tmp = path.with_name("." + path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(order)
        for i in range(rows):
            r = dict(real[rng.randrange(len(real))])
            r["sa2_code_2021"], r["sa2_name_2021"] = str(100000000 + seed * 1000000 + i), f"Area {seed}-{i}"
            w.writerow([r[c] for c in order])
            written.append(r)
    tmp.rename(path)
    return written


def expected_value(column: str, text: str):
    if column in ("sa2_code_2021", "sa2_name_2021"):
        return text
    if text == "":
        return None
    return float(text) if column.endswith("_score") else int(text.replace(",", ""))


def compare_with_warehouse(state: Path, sources: list[tuple[tuple[str, ...], list[dict]]]) -> int:
    """Every value of every source row against the warehouse row of its SA2; returns the count."""
    con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
    try:
        rel = con.table("seifa_sa2")
        names = rel.columns
        loaded = {r[names.index("sa2_code")]: dict(zip(names, r)) for r in rel.fetchall()}
    finally:
        con.close()
    compared = 0
    for order, rows in sources:
        for r in rows:
            row = loaded[r["sa2_code_2021"]]
            for c in order:
                target = {"sa2_code_2021": "sa2_code", "sa2_name_2021": "sa2_name"}.get(c, c)
                assert row[target] == expected_value(c, r[c]), (
                    f"{r['sa2_code_2021']}.{target}: warehouse {row[target]!r}, file {r[c]!r} "
                    f"(columns in the order {order})")
                compared += 1
    return compared


def test_sigkill_during_runs_of_reordered_seifa_files_loads_the_files_values(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    master = tmp_path / "master.yaml"
    master.write_text(f"pipelines:\n  - {{name: seifa_sa2, config_file: {BUNDLED / 'seifa_sa2.yaml'}}}\n"
                      "daemon: {max_workers: 2, shutdown_grace: PT5S, max_recoveries: 20}\n")
    inbox = state / "inbox" / "seifa_sa2"
    inbox.mkdir(parents=True)
    rng = random.Random(11)
    sources, kills_in_transform = [], 0
    deadline = time.monotonic() + 240
    for round_, order in enumerate(ORDERS):
        assert time.monotonic() < deadline, "the crash rounds took too long"
        rows = seifa_file(inbox / f"seifa-{round_}.csv", order, 200_000, seed=round_ + 1)
        sources.append((order, rows))
        d = Daemon(master, state).wait_ready()
        # the first kill lands in transform, which reads the extract manifest back from the log
        # on recovery; later ones at random moments of the run
        started = wait_until(lambda: query(
            state, "SELECT run_id FROM events WHERE type = 'stage.started' AND stage = 'transform' "
            "AND run_id NOT IN (SELECT run_id FROM events WHERE type = 'run.recovered')"),
            60, "transform to start", interval=0.005)
        time.sleep(rng.uniform(0, 0.15) if round_ else 0)
        d.kill()
        in_flight = query(state, "SELECT COUNT(*) FROM events WHERE type = 'stage.completed' "
                          "AND stage = 'transform' AND run_id = ?", (started[-1][0],))[0][0] == 0
        kills_in_transform += in_flight
        final = Daemon(master, state, once=True)
        assert final.wait(timeout=120) == 0, final.output()
    assert kills_in_transform >= 1, "no kill landed while transform ran; the test proved nothing"
    runs = query(state, "SELECT state, COUNT(*) FROM runs GROUP BY 1")
    assert runs == [("COMPLETED", len(ORDERS))], runs
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'file.quarantined'") == [(0,)]
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'run.recovered'")[0][0] >= 1
    compared = compare_with_warehouse(state, sources)
    assert compared == sum(len(order) * len(rows) for order, rows in sources)
    check = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=60, env=env())
    assert check.returncode == 0, check.stdout + check.stderr
