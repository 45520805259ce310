"""The systemd unit: it verifies, it is hardened, and the hardening does not break us.

systemd is not PID 1 here, so ``systemd-analyze verify`` and
``systemd-analyze security --offline=true`` on a copy of the unit are what
can run.  The copy's ExecStart points at this environment's ``ahgd`` because
``verify`` checks that the binary exists.
"""

from __future__ import annotations

import ctypes
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.durations import parse_duration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "ahgd-daemon.service"
README = REPO / "systemd" / "README.md"
SYSUSERS = REPO / "systemd" / "ahgd.sysusers.conf"
INSTALLED_AHGD = "/usr/local/bin/ahgd"
DEFAULT_SHUTDOWN_GRACE = "PT30S"
MAX_EXPOSURE = 2.0

# The drop-in systemd/README.md gives for the optional loopback status port.
STATUS_PORT_DROP_IN = """\
[Service]
PrivateNetwork=no
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
IPAddressAllow=localhost
"""


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed; install the systemd package to check the unit")
    return exe


def _directives(text: str) -> dict[str, list[str]]:
    """Every Key=value of the unit, all values of repeated keys in order."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def unit_copy(tmp_path: Path, ahgd: list[str]) -> Path:
    """The unit with ExecStart pointing at an ahgd that exists here, for verify."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_AHGD} " in text
    path = tmp_path / "ahgd-daemon.service"
    path.write_text(text.replace(f"ExecStart={INSTALLED_AHGD} ", f"ExecStart={shlex.join(ahgd)} "))
    return path


def _exposure(unit: Path) -> tuple[float, str]:
    proc = subprocess.run(
        [_systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    output = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert proc.returncode == 0 and match, output
    return float(match.group(1)), output


def test_verify_reports_nothing_about_the_unit(unit_copy):
    proc = subprocess.run(
        [_systemd_analyze(), "verify", "--man=false", str(unit_copy)],
        capture_output=True, text=True, timeout=60,
    )
    output = proc.stdout + proc.stderr
    about_us = [line for line in output.splitlines()
                if unit_copy.name in line or str(unit_copy.parent) in line]
    assert proc.returncode == 0, output
    assert about_us == [], output


def test_security_exposure_is_at_most_2(unit_copy):
    exposure, output = _exposure(unit_copy)
    print(output)
    assert exposure <= MAX_EXPOSURE, output


def test_status_port_drop_in_stays_at_most_2(unit_copy):
    assert STATUS_PORT_DROP_IN in README.read_text()
    unit_copy.write_text(unit_copy.read_text() + "\n" + STATUS_PORT_DROP_IN)
    exposure, output = _exposure(unit_copy)
    assert exposure <= MAX_EXPOSURE, output


def test_unit_declares_lifecycle_and_sandbox():
    text = UNIT.read_text()
    d = _directives(text)
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecStart": [f"{INSTALLED_AHGD} daemon --config /etc/ahgd/master.yaml "
                      "--state-dir /var/lib/ahgd"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "WatchdogSec": ["30"],
        "Restart": ["on-failure"],
        "RestartSec": ["5"],
        "KillMode": ["mixed"],
        "User": ["ahgd"],
        "Group": ["ahgd"],
        "StateDirectory": ["ahgd"],
        "StateDirectoryMode": ["0750"],
        "UMask": ["0027"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"],
        "ReadWritePaths": ["/var/lib/ahgd -/srv/ahgd"],
        "MemoryDenyWriteExecute": ["yes"],
    }
    assert {key: d.get(key) for key in expected} == expected
    assert "AHGD_STATE_DIR=/var/lib/ahgd" in d["Environment"]
    assert "# Environment=AHGD_LOG_LEVEL=" in text
    # psutil reads /proc/meminfo, /proc/stat and /proc/loadavg: no ProcSubset=pid.
    assert "ProcSubset" not in d


def test_sysusers_file_creates_the_ahgd_user_and_group(tmp_path):
    exe = shutil.which("systemd-sysusers")
    if exe is None:
        pytest.skip("systemd-sysusers is not installed; install the systemd package to check it")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run([exe, f"--root={tmp_path}", "--dry-run", str(SYSUSERS)],
                          capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(r"Creating group 'ahgd' with GID \d+", output), output
    assert re.search(r"Creating user 'ahgd' \(AHGD ETL daemon\) with UID \d+", output), output


def test_stop_timeout_outlasts_the_shutdown_grace():
    stop = parse_duration(_directives(UNIT.read_text())["TimeoutStopSec"][0])
    assert stop > parse_duration(DEFAULT_SHUTDOWN_GRACE)


_MDWE_CHILD = r"""
import ctypes, mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise SystemExit("MDWE is not in force: a W+X mapping was allowed")
except PermissionError:
    pass
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
assert callback(41) == 42
import duckdb, pyarrow.parquet, psutil
con = duckdb.connect(DB)
con.execute("CREATE TABLE t AS SELECT range AS i FROM range(100000)")
con.table("t").write_parquet(PARQUET)
assert con.execute("SELECT sum(i) FROM read_parquet(?)", [PARQUET]).fetchone()[0] == 4999950000
assert pyarrow.parquet.read_table(PARQUET).num_rows == 100000
assert psutil.Process().memory_info().rss > 0
print("ok")
"""


def test_memory_deny_write_execute_leaves_python_and_duckdb_working(tmp_path):
    """MemoryDenyWriteExecute=yes, reproduced with the kernel's PR_SET_MDWE (Linux 6.3+).

    systemd 252 enforces it with a seccomp filter (no W+X mmap, no mprotect
    adding PROT_EXEC, no SHM_EXEC); newer systemd on Linux 6.3+ uses this
    prctl, which refuses the same W+X and exec-gaining mappings.
    """
    if ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+); cannot reproduce MemoryDenyWriteExecute")
    child = (f"DB = {str(tmp_path / 'mdwe.duckdb')!r}\nPARQUET = {str(tmp_path / 't.parquet')!r}\n"
             + _MDWE_CHILD)
    launcher = (
        "import ctypes, os, sys\n"
        "assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0  # PR_SET_MDWE, REFUSE_EXEC_GAIN\n"
        "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])\n"
    )
    proc = subprocess.run([sys.executable, "-c", launcher, child],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr


def test_unit_limits_open_files_and_tasks_well_above_the_connection_caps():
    from ahgd_daemon import control, httpstatus

    d = _directives(UNIT.read_text())
    nofile, tasks = int(d["LimitNOFILE"][0]), int(d["TasksMax"][0])
    connections = control.MAX_CONNECTIONS + httpstatus.MAX_CONNECTIONS
    assert nofile >= 10 * connections and tasks >= 4 * connections
    readme = README.read_text()
    assert f"LimitNOFILE={nofile}" in readme and f"TasksMax={tasks}" in readme
