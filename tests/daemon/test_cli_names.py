"""Wrong names never look like success: every command that takes a name (a state directory,
a pipeline, a run id, a stage, an event type) says what was not found, the closest known
name, and where to look, and exits 1 without writing anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from state import EventLog, EventType as T, new_event

from .harness import REPO

MASTER = REPO / "pipelines" / "ahgd" / "config" / "master.yaml"
NO_HISTORY = ("error: no history at {db}: nothing has run with this state directory yet (pass "
              "--state-dir or set AHGD_STATE_DIR to the directory the daemon uses)\n")


def _seed(state_dir: Path) -> None:
    with EventLog.open(state_dir) as log:
        log.append(new_event(T.RUN_REQUESTED, "seifa_sa2-file-18a69af98bc8-49a8ba",
                             pipeline="seifa_sa2", trigger="manual"))
        log.append(new_event(T.RUN_STARTED, "seifa_sa2-file-18a69af98bc8-49a8ba", stages=["a"]))
        log.append(new_event(T.STAGE_STARTED, "seifa_sa2-file-18a69af98bc8-49a8ba", stage="a",
                             attempt=1))
        log.append(new_event(T.STAGE_FAILED, "seifa_sa2-file-18a69af98bc8-49a8ba", stage="a",
                             attempt=1, error="bad row"))
        log.append(new_event(T.RUN_FAILED, "seifa_sa2-file-18a69af98bc8-49a8ba", error="bad"))
        log.append(new_event(T.RUN_REQUESTED, "mortality_regions-1", pipeline="mortality_regions",
                             trigger="manual"))
        log.append(new_event(T.ORCH_STARTED, "orch-nightly-1", name="nightly",
                             order=["mortality_regions"]))


def run(ahgd, env, *args):
    return subprocess.run([*ahgd, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("command", [
    ["status"], ["status", "--json"], ["metrics"], ["history"], ["events"],
    ["events", "--run", "x"], ["state", "check"], ["cancel", "some-run"],
    ["retry", "some-run"], ["retry", "some-run", "--config", str(MASTER)],
    ["warehouse", "rebuild", "--dry-run"],
    ["warehouse", "rebuild", "--dry-run", "--config", str(MASTER)],
])
def test_a_state_directory_with_no_history_is_an_error_and_is_left_alone(
        tmp_path, ahgd, clean_env, command):
    """`ahgd status --state-dir /no/such/dir` used to print an empty report and exit 0;
    `cancel` and `retry` even made a history there."""
    nowhere = tmp_path / "no" / "such" / "dir"
    proc = run(ahgd, clean_env, *command, "--state-dir", str(nowhere))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == NO_HISTORY.format(db=nowhere / "history.db")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("args, message", [
    (["events", "--run", "seifa_sa2-file-18a69af98bc8-49a8bb"],
     "no run 'seifa_sa2-file-18a69af98bc8-49a8bb' in this state directory; did you mean "
     "'seifa_sa2-file-18a69af98bc8-49a8ba'? (see `ahgd history`)"),
    (["events", "--run", "no-such-run"],
     "no run 'no-such-run' in this state directory (see `ahgd history`)"),
    (["events", "--type", "run.completd"],
     "unknown event type 'run.completd'; did you mean 'run.completed'?"),
    (["events", "--type", "run.failed", "--type", "nonsense"],
     "unknown event type 'nonsense'; the types are alert.raised, alert.resolved, "
     "data.expired, file.arrived, file.duplicate, file.expired, file.quarantined, "
     "file.refused, file.released, orchestration.completed, "
     "orchestration.failed, orchestration.pipeline_finished, orchestration.pipeline_skipped, "
     "orchestration.pipeline_started, orchestration.started, pipeline.paused, "
     "pipeline.resumed, run.cancelled, run.completed, "
     "run.failed, run.parked, run.recovered, run.requested, run.retried, run.started, "
     "run.suspended, schedule.fired, schedule.skipped, stage.completed, stage.failed, "
     "stage.interrupted, "
     "stage.invalidated, stage.retrying, stage.reused, stage.skipped, stage.started, "
     "stage.timed_out, warehouse.lost"),
    (["history", "--pipeline", "seifa"],
     "no runs of pipeline 'seifa' in this state directory; did you mean 'seifa_sa2'? "
     "(pipelines with runs: mortality_regions, seifa_sa2)"),
    (["history", "--pipeline", "zzz", "--json"],
     "no runs of pipeline 'zzz' in this state directory (pipelines with runs: "
     "mortality_regions, seifa_sa2)"),
    (["retry", "seifa_sa2-file-18a69af98bc8-49a8bb"],   # said before --config is asked for
     "no run 'seifa_sa2-file-18a69af98bc8-49a8bb' in this state directory; did you mean "
     "'seifa_sa2-file-18a69af98bc8-49a8ba'? (see `ahgd history`)"),
    (["cancel", "mortality_regions-2"],
     "no run 'mortality_regions-2' in this state directory; did you mean "
     "'mortality_regions-1'? (see `ahgd history`)"),
    (["run", "seifa", "--config", str(MASTER)],
     "no pipeline 'seifa' in the configuration; did you mean 'seifa_sa2'? (known: "
     "mortality_regions, sa2_health_profile, seifa_sa2)"),
    (["run", "seifa_sa2", "--resume-from", "trasform", "--config", str(MASTER)],
     "pipeline 'seifa_sa2' has no stage 'trasform' to resume from; did you mean 'transform'? "
     "(its stages: extract, transform, validate, load)"),
    (["warehouse", "rebuild", "--pipeline", "mortality", "--dry-run", "--config", str(MASTER)],
     "no pipeline 'mortality' in the configuration; did you mean 'mortality_regions'? (known: "
     "mortality_regions, sa2_health_profile, seifa_sa2)"),
])
def test_a_wrong_name_is_an_error_with_the_closest_known_name(state_dir, ahgd, clean_env, args,
                                                              message):
    _seed(state_dir)
    before = run(ahgd, clean_env, "events", "--json", "--state-dir", str(state_dir)).stdout
    proc = run(ahgd, clean_env, *args, "--state-dir", str(state_dir))
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", f"error: {message}\n")
    after = run(ahgd, clean_env, "events", "--json", "--state-dir", str(state_dir)).stdout
    assert after == before  # nothing was recorded


def test_right_names_still_answer(state_dir, ahgd, clean_env):
    _seed(state_dir)
    proc = run(ahgd, clean_env, "events", "--run", "mortality_regions-1", "--type",
               "run.requested", "--state-dir", str(state_dir))
    assert proc.returncode == 0 and "run.requested" in proc.stdout
    proc = run(ahgd, clean_env, "history", "--pipeline", "seifa_sa2", "--state-dir", str(state_dir))
    assert proc.returncode == 0 and "seifa_sa2-file-18a69af98bc8-49a8ba" in proc.stdout
    proc = run(ahgd, clean_env, "events", "--run", "orch-nightly-1", "--state-dir", str(state_dir))
    assert proc.returncode == 0 and "orchestration.started" in proc.stdout  # not a run: its id
    proc = run(ahgd, clean_env, "events", "--type", "file.arrived", "--state-dir", str(state_dir))
    assert (proc.returncode, proc.stdout) == (0, "")   # a real type with no event yet: no error
    proc = run(ahgd, clean_env, "status", "--json", "--state-dir", str(state_dir))
    assert proc.returncode == 0 and '"pending_runs": 1' in proc.stdout
