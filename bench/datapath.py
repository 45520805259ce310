"""Data path benchmark: the mortality_regions pipeline against one hand-written DuckDB script.

    python bench/datapath.py [--reps 95] [--repeat 3] [--dir DIR] [--threads N]

Builds a MORT Table 1 of about 1.5 M rows from the bundled file (copy k of
every row gets the area code suffix ``X<k>``, so (level, area, year, sex) stays
unique; AIHW's level-less total/unknown codes such as ``SA999999`` appear only
in copy 0), then, on the same machine in the same run, alternately:

* the pipeline: ``pipelines/ahgd/config/mortality_regions.yaml`` with the
  default process executor, ``run(input_file=...)`` on a fresh state directory
  (hashing the input, four stages in a worker, the event log, the warehouse);
* the floor: a hand-written DuckDB SQL script doing the same parse, clean,
  validate and idempotent load into a fresh ``warehouse.duckdb`` from one
  connection, in two variants: "staged" (a temporary table, validated, then
  delete-by-key and insert) and "direct" (insert once, validate the new rows
  inside the transaction, delete the old keys).  Both hash the input with
  hashlib, as the pipeline's ``run(input_file=...)`` does.

Prints both wall times (median of ``--repeat``), their ratio, where the
pipeline's time goes (per stage, from ``stage_timings`` in history.db), the
workers' peak RSS (``peak_rss_mb``) and this process's peak RSS during the run.
Targets: ratio <= 1.3, peak RSS <= 1 GB.  Both loads are checked to hold the
same rows.

``--spreadsheets`` runs the spreadsheet path instead (bench/sheetpath.py): the
SEIFA data cube layout and a 1.5 M-row MORT workbook, each against the same
data as CSV (target: spreadsheet <= 3x CSV, peak RSS <= 1 GB).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

from pipelines import load_pipeline  # noqa: E402

MORT = REPO / "pipelines" / "ahgd" / "data" / "aihw_mort_table1.csv"
YAML = REPO / "pipelines" / "ahgd" / "config" / "mortality_regions.yaml"
COUNTS = ("deaths", "population", "premature_deaths", "potential_years_of_life_lost",
          "potentially_avoidable_deaths")
RATES = ("crude_rate_per_100000", "age_standardised_rate_per_100000", "rate_ratio",
         "premature_deaths_percent", "premature_deaths_asr_per_100000", "pyll_rate_per_1000",
         "pad_percent", "pad_asr_per_100000", "median_age")


def generate(target: Path, reps: int) -> int:
    """Write ``reps`` copies of MORT Table 1 with distinct area codes; return the row count."""
    con = duckdb.connect()
    con.execute(f"""
        COPY (
            SELECT * REPLACE (CASE WHEN k = 0 THEN mort ELSE mort || 'X' || k END AS mort)
            FROM read_csv('{MORT}', all_varchar = true, header = true), range({reps}) AS r(k)
            WHERE k = 0 OR mort NOT IN ('SA9999', 'SA8888', 'SA999999', 'SA888888')
            ORDER BY k
        ) TO '{target}' (HEADER, DELIMITER ',')""")
    n = con.execute(f"SELECT count(*) FROM read_csv('{target}', all_varchar = true)").fetchone()[0]
    con.close()
    return n


# --------------------------------------------------------------------------- the floor

def _num(c: str) -> str:
    grouped = r"[+-]?[0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?"
    v = (f"CASE WHEN contains({c}, ',') THEN (CASE WHEN regexp_full_match(trim({c}), "
         f"'{grouped}') THEN TRY_CAST(replace(trim({c}), ',', '') AS DOUBLE) END) "
         f"ELSE TRY_CAST({c} AS DOUBLE) END")
    return f"CASE WHEN isfinite({v}) THEN {v} END"


def _blank(c: str) -> str:
    return f"(coalesce(lower(trim({c})), '') IN ('', 'n.p.', 'np'))"


def parse_sql(csv_path: Path, sha: str, run_id: str) -> str:
    """Read, parse and clean: the same meaning as the pipeline's transform, written by hand."""
    numeric = ("year", *COUNTS, *RATES)
    whole = ("year", *COUNTS)
    typed = ", ".join(
        f"CASE WHEN n_{c} = trunc(n_{c}) AND abs(n_{c}) < 9.2e18 THEN CAST(n_{c} AS BIGINT) END "
        f"AS {c}" if c in whole else f"n_{c} AS {c}" for c in numeric)
    bad = " OR ".join(f"(n_{c} IS NULL AND NOT {_blank(c)})" for c in numeric)
    area = "regexp_extract(mort_code, '^(STE|LGA|SA3|SA4|PHN|GCC|REM|SEG|SA)([0-9A-Z]+)$', ['p', 'r'])"
    return f"""
        SELECT CASE {area}.p WHEN '' THEN NULL WHEN 'GCC' THEN 'GCCSA' WHEN 'SA' THEN
                    CASE length({area}.r) WHEN 6 THEN 'SA3' WHEN 4 THEN 'SA4' END
                    ELSE {area}.p END AS geography_level,
               nullif({area}.r, '') AS area_code, area_name,
               CASE WHEN starts_with(lower(area_name), 'australia (total)') THEN 'total'
                    WHEN starts_with(lower(area_name), 'unknown') THEN 'unknown'
                    ELSE 'area' END AS area_kind,
               category, mort_code, {typed}, sex, '{sha}' AS _source_sha256,
               {bad} AS bad_cell, '{run_id}' AS _run_id
        FROM (SELECT *, {', '.join(f'{_num(c)} AS n_{c}' for c in numeric)}
              FROM (SELECT upper(trim(mort)) AS mort_code, trim(category) AS category,
                           trim(geography) AS area_name, YEAR AS year,
                           CASE lower(trim(SEX)) WHEN 'males' THEN 'Males' WHEN 'male' THEN 'Males'
                                WHEN 'm' THEN 'Males' WHEN 'females' THEN 'Females'
                                WHEN 'female' THEN 'Females' WHEN 'f' THEN 'Females'
                                WHEN 'persons' THEN 'Persons' WHEN 'person' THEN 'Persons'
                                WHEN 'p' THEN 'Persons' WHEN 'total' THEN 'Persons'
                                ELSE trim(SEX) END AS sex,
                           {', '.join(numeric[1:])}
                    FROM read_csv('{csv_path}', all_varchar = true, header = true)))"""


def checks_sql(table: str, where: str = "true") -> list[str]:
    """Every rule of the YAML plus the validator's checks, in two queries (all must be 0)."""
    return [
        f"""SELECT count(*) FILTER (WHERE bad_cell),
                   count(*) FILTER (WHERE geography_level IS NULL OR area_code IS NULL
                                    OR year IS NULL OR sex IS NULL),
                   count(*) FILTER (WHERE sex NOT IN ('Males', 'Females', 'Persons')),
                   count(*) FILTER (WHERE year NOT BETWEEN 1907 AND 2100),
                   count(*) FILTER (WHERE {' OR '.join(f'{c} < 0' for c in (*COUNTS, *RATES))}
                                    OR premature_deaths_percent > 100 OR pad_percent > 100
                                    OR median_age > 130),
                   count(*) FILTER (WHERE geography_level IS DISTINCT FROM CASE
                        WHEN contains(category, '(SA3)') THEN 'SA3'
                        WHEN contains(category, '(SA4)') THEN 'SA4'
                        WHEN contains(category, '(LGA)') THEN 'LGA'
                        WHEN contains(category, '(PHN)') THEN 'PHN'
                        WHEN contains(category, '(GCCSA)') THEN 'GCCSA'
                        WHEN contains(category, 'State and territory') THEN 'STE'
                        WHEN contains(category, 'Remoteness area') THEN 'REM'
                        WHEN contains(category, 'Socioeconomic group') THEN 'SEG' END)
            FROM {table} WHERE {where}""",
        f"""SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where}
            GROUP BY geography_level, area_code, year, sex HAVING count(*) > 1)""",
    ]


KEY_MATCH = ("t.geography_level = s.geography_level AND t.area_code = s.area_code "
             "AND t.year = s.year AND t.sex = s.sex")


def floor_staged(csv_path: Path, sha: str, run_id: str) -> list[str]:
    """Stage in a temporary table, validate it, then delete-by-key and insert in one transaction."""
    return [
        f"CREATE TEMP TABLE staged AS {parse_sql(csv_path, sha, run_id)}",
        *checks_sql("staged"),
        "BEGIN",
        "CREATE TABLE IF NOT EXISTS wh.mortality_region AS "
        "SELECT * EXCLUDE (bad_cell) FROM staged LIMIT 0",
        f"DELETE FROM wh.mortality_region AS t USING staged AS s WHERE {KEY_MATCH}",
        "INSERT INTO wh.mortality_region BY NAME SELECT * EXCLUDE (bad_cell) FROM staged",
        "COMMIT",
    ]


def floor_direct(csv_path: Path, sha: str, run_id: str) -> list[str]:
    """Write once: insert straight into the warehouse, validate the new rows, delete the old keys."""
    new = f"_run_id = '{run_id}'"
    return [
        "BEGIN",
        "CREATE TABLE IF NOT EXISTS wh.mortality_region AS "
        f"SELECT * FROM ({parse_sql(csv_path, sha, run_id)}) LIMIT 0",
        f"INSERT INTO wh.mortality_region BY NAME {parse_sql(csv_path, sha, run_id)}",
        *checks_sql("wh.mortality_region", new),
        f"DELETE FROM wh.mortality_region AS t USING (SELECT * FROM wh.mortality_region WHERE {new}) "
        f"AS s WHERE {KEY_MATCH} AND NOT t.{new}",
        "COMMIT",           # (bad_cell stays as a column: dropping it would rewrite the table)
    ]


def run_floor(script, csv_path: Path, work: Path, threads: int | None) -> float:
    work.mkdir(parents=True)
    config = {"threads": threads} if threads else {}
    t0 = time.perf_counter()
    sha = hashlib.sha256()
    with open(csv_path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    con = duckdb.connect(config=config)
    con.execute(f"ATTACH '{work / 'warehouse.duckdb'}' AS wh")
    for sql in script(csv_path, sha.hexdigest(), "floor"):
        if sql.lstrip().startswith("SELECT"):
            row = con.execute(sql).fetchone()
            if any(row):
                raise SystemExit(f"floor validation failed: {row}")
        else:
            con.execute(sql)
    con.close()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the pipeline

def run_pipeline(csv_path: Path, state: Path, threads: int | None,
                 yaml: Path = YAML) -> tuple[float, float, str]:
    pipeline = load_pipeline(yaml, state_dir=state, executor="process")
    if threads:
        pipeline.duckdb_settings["threads"] = threads
    _reset_peak_rss()
    t0 = time.perf_counter()
    ctx = pipeline.run(input_file=csv_path)
    wall = time.perf_counter() - t0
    if ctx.state != "COMPLETED":
        raise SystemExit(f"pipeline run failed at {ctx.failed_stage}: {ctx.error}")
    return wall, _peak_rss_mb(), ctx.run_id


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def stage_report(state: Path, run_id: str) -> list[tuple]:
    con = sqlite3.connect(state / "history.db")
    try:
        return con.execute("SELECT stage, wall_s, cpu_s, peak_rss_mb, rows FROM stage_timings "
                           "WHERE run_id = ? ORDER BY started_at", [run_id]).fetchall()
    finally:
        con.close()


def same_rows(a: Path, b: Path) -> tuple[int, bool]:
    con = duckdb.connect()
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    names = [r[0] for r in con.execute("DESCRIBE a.mortality_region").fetchall() if r[0] != "_run_id"]
    cols = ", ".join(f'"{c}"' for c in names)
    n = con.execute("SELECT count(*) FROM a.mortality_region").fetchone()[0]
    diff = con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM a.mortality_region EXCEPT ALL "
                       f"SELECT {cols} FROM b.mortality_region)").fetchone()[0]
    con.close()
    return n, diff == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=95, help="copies of MORT Table 1 (95: ~1.5 M rows)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each side")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--spreadsheets", action="store_true",
                    help="the spreadsheet path: .xlsx against CSV (bench/sheetpath.py)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ahgd-bench-cache",
                    help="where --spreadsheets keeps the workbooks it builds once")
    args = ap.parse_args()
    if args.spreadsheets:
        return spreadsheets(args)
    root = Path(tempfile.mkdtemp(prefix="ahgd-datapath-", dir=args.dir))
    try:
        csv_path = root / "mort_big.csv"
        t0 = time.perf_counter()
        rows = generate(csv_path, args.reps)
        print(f"input: {rows:,} rows, {csv_path.stat().st_size / 1e6:.0f} MB "
              f"(generated in {time.perf_counter() - t0:.1f} s)")
        pipe, staged, direct, peaks, reports = [], [], [], [], []
        for i in range(args.repeat):
            staged.append(run_floor(floor_staged, csv_path, root / f"staged{i}", args.threads))
            direct.append(run_floor(floor_direct, csv_path, root / f"direct{i}", args.threads))
            wall, parent_mb, run_id = run_pipeline(csv_path, root / f"state{i}", args.threads)
            pipe.append(wall)
            peaks.append(parent_mb)
            reports.append(stage_report(root / f"state{i}", run_id))
            print(f"  run {i + 1}: pipeline {wall:.2f} s, SQL staged {staged[-1]:.2f} s, "
                  f"SQL direct {direct[-1]:.2f} s")
        for name in ("staged0", "direct0"):
            n, same = same_rows(root / "state0" / "warehouse.duckdb", root / name / "warehouse.duckdb")
            print(f"warehouse rows: {n:,}; pipeline and SQL {name[:-1]} loaded the same rows: {same}")
        p, f, d = (statistics.median(x) for x in (pipe, staged, direct))
        print(f"pipeline (process executor): {p:.2f} s")
        print(f"hand-written SQL, staged in a temp table then loaded: {f:.2f} s   ratio {p / f:.2f}")
        print(f"hand-written SQL, inserted once then validated:       {d:.2f} s   ratio {p / d:.2f}")
        print("(target: ratio <= 1.3)")
        print("per stage (median wall s / cpu s / peak RSS MB):")
        for j, (stage, *_rest) in enumerate(reports[0]):
            cells = [r[j] for r in reports]
            print(f"  {stage:<10} {statistics.median(c[1] for c in cells):7.2f} "
                  f"{statistics.median(c[2] or 0 for c in cells):7.2f} "
                  f"{max(c[3] or 0 for c in cells):8.0f}")
        stages = statistics.median(sum(c[1] for c in r) for r in reports)
        print(f"  outside stages (input hash, event log, dispatch): {p - stages:.2f} s")
        worker_peak = max(c[3] or 0 for r in reports for c in r)
        print(f"peak RSS: worker {worker_peak:.0f} MB, parent {max(peaks):.0f} MB (target <= 1024)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def spreadsheets(args: argparse.Namespace) -> None:
    """The spreadsheet path: each workbook and its CSV through the bundled pipeline."""
    import sheetpath

    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    inputs = {"seifa_sa2": (REPO / "pipelines" / "ahgd" / "data" / "seifa_2021_sa2.csv",
                            cache / "seifa_cube.xlsx"),
              "mortality_regions": (cache / f"mort_{args.reps}.csv",
                                    cache / f"mort_{args.reps}.xlsx")}
    csv_mort, xlsx_mort = inputs["mortality_regions"]
    builders = ((csv_mort, lambda p: generate(p, args.reps)),
                (xlsx_mort, lambda p: sheetpath.mort_workbook(csv_mort, p)),
                (inputs["seifa_sa2"][1], lambda p: sheetpath.seifa_workbook(p, REPO)))
    for path, build in builders:
        if path.exists():
            continue
        part = path.with_name(f"{path.stem}.part{path.suffix}")   # an interrupted build: no file
        t0 = time.perf_counter()
        build(part)
        part.rename(path)
        print(f"built {path.name} ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t0:.1f} s")
    root = Path(tempfile.mkdtemp(prefix="ahgd-sheetpath-", dir=args.dir))
    try:
        for name, (csv_path, xlsx_path) in inputs.items():
            yaml = REPO / "pipelines" / "ahgd" / "config" / f"{name}.yaml"
            runs: dict[str, list] = {"csv": [], "xlsx": []}
            for i in range(args.repeat):
                for kind, path in (("csv", csv_path), ("xlsx", xlsx_path)):
                    state = root / f"{name}-{kind}{i}"
                    wall, _parent, run_id = run_pipeline(path, state, args.threads, yaml)
                    runs[kind].append((wall, stage_report(state, run_id)))
            table = "seifa_sa2" if name == "seifa_sa2" else "mortality_region"
            n, same = same_table(root / f"{name}-csv0" / "warehouse.duckdb",
                                 root / f"{name}-xlsx0" / "warehouse.duckdb", table)
            print(f"{name}: {n:,} rows; CSV and spreadsheet loaded the same rows: {same}")
            sheetpath.compare(name, runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def same_table(a: Path, b: Path, table: str) -> tuple[int, bool]:
    """Rows of ``table`` in both warehouses, and whether they agree (DOUBLEs to 9 decimals:
    a spreadsheet holds 15 significant digits); columns only one of them has are left out."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    types = {r[0]: r[1] for r in con.execute(f"DESCRIBE a.{table}").fetchall()}
    other = {r[0] for r in con.execute(f"DESCRIBE b.{table}").fetchall()}
    cols = ", ".join(f'round("{c}", 9)' if t == "DOUBLE" else f'"{c}"' for c, t in types.items()
                     if c in other and c not in ("_run_id", "_source_sha256"))
    n = con.execute(f"SELECT count(*) FROM a.{table}").fetchone()[0]
    diff = con.execute(f"SELECT count(*) FROM ((SELECT {cols} FROM a.{table} EXCEPT ALL "
                       f"SELECT {cols} FROM b.{table}) UNION ALL (SELECT {cols} FROM b.{table} "
                       f"EXCEPT ALL SELECT {cols} FROM a.{table}))").fetchone()[0]
    con.close()
    return n, diff == 0


if __name__ == "__main__":
    main()
