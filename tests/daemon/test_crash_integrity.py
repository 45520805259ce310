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

import pytest

from tests.ahgd_truth import (MORT_CSV, SEIFA_CSV, latest_sa3_persons, mortality_mismatches,
                              profile_mismatches, read_rows, seifa_mismatches, table_by)

from .harness import REPO, Daemon, ahgd_exe, env, query, wait_until

pytestmark = pytest.mark.slow

BUNDLED = REPO / "pipelines" / "ahgd" / "config"
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
    real = read_rows(SEIFA_CSV)
    rng = random.Random(seed)
    written = []
    tmp = path.with_name("." + path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(order)
        for i in range(rows):
            r = dict(real[rng.randrange(len(real))])
            r["sa2_code_2021"], r["sa2_name_2021"] = f"9{seed}{i:07d}", f"Area {seed}-{i}"
            w.writerow([r[c] for c in order])
            written.append(r)
    tmp.rename(path)
    return written


def compare_seifa(state: Path, sources: list[tuple[tuple[str, ...], list[dict]]]) -> int:
    """Every value of every source row against the warehouse row of its SA2; returns the count."""
    loaded = table_by(state, "seifa_sa2", "sa2_code")
    compared = 0
    for order, rows in sources:
        for r in rows:
            given = {c: r[c] for c in order}
            assert seifa_mismatches(loaded[(r["sa2_code_2021"],)], given) == [], order
            compared += len(order)
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
    compared = compare_seifa(state, sources)
    assert compared == sum(len(order) * len(rows) for order, rows in sources)
    check = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=60, env=env())
    assert check.returncode == 0, check.stdout + check.stderr


# --------------------------------------------------------------------------- random kills


def mort_variant(path: Path, shift: int, seed: int) -> None:
    """The real MORT table with its columns in another order and its years moved back by
    ``shift`` (other bytes, other keys: every row loads beside the real file's)."""
    real = read_rows(MORT_CSV)
    order = list(real[0])
    random.Random(seed).shuffle(order)
    tmp = path.with_name("." + path.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(order)
        for r in real:
            w.writerow([str(int(r[c]) - shift) if c == "YEAR" else r[c] for c in order])
    tmp.rename(path)


def test_random_sigkills_while_the_bundled_pipelines_take_real_files(tmp_path):
    """The bundled master file (SEIFA, MORT, the profile built from both) takes the real
    SEIFA and MORT files and variants in other column orders, while the daemon is killed
    at random moments; then every loaded value is compared with its file."""
    state = tmp_path / "state"
    # the bundled master file, with room for as many recoveries as this test makes
    # (the default of 3 would park a run that several kills land in, as it should)
    master = tmp_path / "master.yaml"
    master.write_text((BUNDLED / "master.yaml").read_text().replace(
        "config_file: ", f"config_file: {BUNDLED}/") + "daemon: {max_recoveries: 50}\n")
    seifa_in, mort_in = state / "inbox" / "seifa_sa2", state / "inbox" / "mortality_regions"
    staging = tmp_path / "staging"
    for d in (seifa_in, mort_in, staging):
        d.mkdir(parents=True)
    rng = random.Random(2026)
    real_seifa, real_mort = read_rows(SEIFA_CSV), read_rows(MORT_CSV)
    seifa_sources: list[tuple[tuple[str, ...], list[dict]]] = [(tuple(real_seifa[0]), real_seifa)]
    drops = [("seifa", "seifa_real.csv", lambda p: p.write_bytes(SEIFA_CSV.read_bytes())),
             ("mort", "mort_real.csv", lambda p: p.write_bytes(MORT_CSV.read_bytes()))]
    for k, order in enumerate(ORDERS, start=1):
        def make(p, order=order, k=k):
            seifa_sources.append((order, seifa_file(p, order, 3000, seed=k)))
        drops.append(("seifa", f"seifa_variant{k}.csv", make))
    for k in (1, 2):
        drops.append(("mort", f"mort_variant{k}.csv", lambda p, k=k: mort_variant(p, 20 * k, k)))
    rng.shuffle(drops)
    kills, deadline = 0, time.monotonic() + 300
    for kind, name, make in drops:
        assert time.monotonic() < deadline, "the crash rounds took too long"
        staged = staging / name
        make(staged)
        d = Daemon(master, state).wait_ready()
        # renamed in while the daemon watches: taken at once (the start-up scan would wait
        # for the file to be stable first), so the kill lands somewhere in its run
        staged.rename((seifa_in if kind == "seifa" else mort_in) / name)
        time.sleep(rng.uniform(0.02, 1.0))
        d.kill()
        kills += 1
    final = Daemon(master, state, once=True)
    assert final.wait(timeout=300) == 0, final.output()

    runs = query(state, "SELECT pipeline, state, COUNT(*) FROM runs GROUP BY 1, 2 ORDER BY 1")
    files = sum(1 for kind, *_ in drops if kind == "seifa"), sum(1 for kind, *_ in drops if kind == "mort")
    assert [r for r in runs if r[0] != "sa2_health_profile"] == [
        ("mortality_regions", "COMPLETED", files[1]), ("seifa_sa2", "COMPLETED", files[0])], runs
    # a profile run set off by the first load fails while the other source is not loaded
    # yet (as it should); the last one completes after both sources' last loads
    early = query(state, "SELECT error FROM runs WHERE pipeline = 'sa2_health_profile' "
                  "AND state != 'COMPLETED'")
    assert all("which do not exist yet" in e for (e,) in early), early
    last_profile = query(state, "SELECT state, started_at FROM runs WHERE pipeline = "
                         "'sa2_health_profile' ORDER BY requested_at DESC LIMIT 1")[0]
    last_load = query(state, "SELECT MAX(ended_at) FROM runs WHERE pipeline != "
                      "'sa2_health_profile'")[0][0]
    assert last_profile[0] == "COMPLETED" and last_profile[1] > last_load, (last_profile, last_load)
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'file.quarantined'") == [(0,)]
    recovered = query(state, "SELECT COUNT(*) FROM events WHERE type = 'run.recovered'")[0][0]
    assert recovered >= 1, "no kill landed during a run; the test proved nothing"

    # seifa_sa2: every row of every SEIFA file, every column it gives
    compared = compare_seifa(state, seifa_sources)
    seifa_rows = table_by(state, "seifa_sa2", "sa2_code")
    assert len(seifa_rows) == sum(len(rows) for _, rows in seifa_sources)
    # mortality_region: every row of the real file and of each variant (years moved back)
    mort_rows = table_by(state, "mortality_region", "mort_code", "year", "sex")
    expected_mort = [(r, 0) for r in real_mort] + [
        (r, 20 * k) for kind, name, _ in drops if name.startswith("mort_variant")
        for k in [int(name[len("mort_variant"):-4])] for r in real_mort]
    assert len(mort_rows) == len(expected_mort)
    for r, shift in expected_mort:
        row = mort_rows[(r["mort"], int(r["YEAR"]) - shift, r["SEX"])]
        assert mortality_mismatches(row, r) == []
        compared += len(r)
    # the profile: built after the last load, from the real SEIFA scores and the latest
    # Persons mortality of each SA3 (the variants only add earlier years)
    latest = latest_sa3_persons(real_mort)
    profile = table_by(state, "sa2_health_profile", "sa2_code")
    assert set(profile) == set(seifa_rows)
    for r in real_seifa:
        assert profile_mismatches(profile[(r["sa2_code_2021"],)], r, latest) == []
        compared += 8
    check = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=60, env=env())
    assert check.returncode == 0, check.stdout + check.stderr
    print(f"\ncrash figures: {kills} kills, {len(drops)} files, "
          f"{sum(r[2] for r in runs)} runs ({recovered} recoveries), {compared} values compared, "
          "0 mismatches")
