"""A ``pattern`` rule's regular expression is judged as DuckDB (RE2) judges it, without
loading DuckDB into a process that has not loaded it (the daemon)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import duckdb

from pipelines.validation import regexes

REPO_ROOT = Path(__file__).resolve().parents[2]


def _duckdb_accepts(con, regex: str) -> bool:
    try:
        con.execute("SELECT regexp_matches('', ?)", [regex])
        return True
    except duckdb.Error:
        return False


def test_what_the_common_subset_accepts_duckdb_accepts():
    alphabet = [*"ab.^$|?*+()[]{}-\\dwsbB019,:é ", "(?:", "{2}", "{1,3}", "{1001}", "[a-z]",
                "\\.", "(?P<n>", "[:alpha:]", "\\p", "\\Q", "(?=", "\\1"]
    rng = random.Random(18)
    con = duckdb.connect()
    accepted, wrong = 0, []
    for _ in range(3000):
        regex = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        if regexes.plainly_valid(regex):
            accepted += 1
            if not _duckdb_accepts(con, regex):
                wrong.append(regex)
    assert wrong == []
    assert accepted > 300   # the subset is not trivially small
    for regex in ("[1-9][0-9]{8}", r"^\d{4}-\d\d$", "(?:NSW|VIC)+", r"[A-Za-z .'\-]+", ""):
        assert regexes.plainly_valid(regex), regex
    # RE2 syntax beyond the subset is asked of DuckDB: valid or not, as DuckDB says
    for regex in (r"\pL+", "[[:alpha:]]", r"\Q.\E", "a{1001}", "(?=a)", r"(a)\1", "a**"):
        assert not regexes.plainly_valid(regex), regex
        assert (regexes.problem(regex) is None) == _duckdb_accepts(con, regex), regex
    assert len(regexes._verdicts) <= regexes.KEPT


def test_a_process_without_duckdb_checks_patterns_without_loading_it():
    code = """
import sys
from pipelines.errors import ConfigError
from pipelines.validation import check_rules
check_rules({"pattern": {"a": "[0-9]{9}", "b": r"\\pL+", "c": "[[:alpha:]]+"}}, stage="s")
try:
    check_rules({"pattern": {"a": "(?=x)"}}, stage="s")
except ConfigError as exc:
    print(exc)
print("duckdb" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=60, check=True).stdout.splitlines()
    assert out[-1] == "False"
    assert out[0].startswith("stage 's': pattern for a is not a valid regular expression (")
    assert out[0].endswith("): '(?=x)'; DuckDB uses RE2 syntax")
