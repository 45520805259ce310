"""``enabled: false`` in the master file: the daemon keeps the pipeline but no trigger of it
fires (its drop folder is not taken from, its schedule does not tick, an upstream completion
does not start it); ``ahgd run`` says it is disabled and how to enable it, and ``--force``
runs it all the same."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time

from ahgd_daemon.control import request

from .harness import Daemon, ahgd_exe, drop_csv, env, query, wait_until


def _config(tmp):
    (tmp / "live.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: live}
        triggers:
          - {type: drop_folder, path: "${state_dir}/inbox/live", pattern: "*.csv", stable_for: PT0.2S}
          - {type: schedule, cron: "0 3 * * *", timezone: Australia/Sydney, misfire: skip}
        stages:
          - {name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}
        """))
    (tmp / "idle.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: idle}
        triggers:
          - {type: drop_folder, path: "${state_dir}/inbox/idle", pattern: "*.csv", stable_for: PT0.2S}
          - {type: schedule, interval: PT0.5S, misfire: all}
          - {type: upstream, pipelines: [live]}
        stages:
          - {name: tick, type: extractor, class: tests.daemon.stages.Tick, retry_attempts: 0}
        """))
    master = tmp / "master.yaml"
    master.write_text(textwrap.dedent("""\
        pipelines:
          - {name: live, config_file: live.yaml}
          - {name: idle, config_file: idle.yaml, enabled: false}
        daemon: {max_workers: 2, shutdown_grace: PT5S}
        """))
    return master


def _ahgd(*args):
    return subprocess.run([*ahgd_exe(), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env())


def test_a_disabled_pipeline_has_its_triggers_off_and_runs_only_when_forced(tmp_path):
    master, state = _config(tmp_path), tmp_path / "state"
    refused = (f"error: pipeline 'idle' is disabled (enabled: false in {master}): its drop "
               "folders, schedules and upstream triggers are off, and it runs only when asked "
               "with --force. Run it once anyway with `ahgd run idle --force`, or set enabled: "
               "true there (and reload a running daemon: systemctl reload ahgd-daemon, or "
               "SIGHUP)\n")
    d = Daemon(master, state).wait_ready()
    try:
        waiting = drop_csv(state / "inbox" / "idle", "waits.csv")
        drop_csv(state / "inbox" / "live", "taken.csv")
        wait_until(lambda: query(state, "SELECT 1 FROM runs WHERE pipeline = 'live' AND state = "
                                        "'COMPLETED'"), 60, "the enabled pipeline's run")
        time.sleep(2)  # four schedule ticks and the upstream completion: none may start 'idle'
        assert query(state, "SELECT run_id FROM runs WHERE pipeline = 'idle'") == []
        assert waiting.exists()
        assert query(state, "SELECT type FROM events WHERE type LIKE 'file.%' OR type = "
                            "'schedule.fired'") == [("file.arrived",)]
        status = json.loads(_ahgd("status", "--json", "--state-dir", state).stdout)
        assert status["daemon"]["disabled"] == ["idle"]
        own = request(state, {"cmd": "status"})["status"]     # the daemon's own document
        assert (own["pipelines"], own["disabled"]) == (["idle", "live"], ["idle"])
        (schedule,) = own["schedules"]                        # the enabled pipeline's only
        assert schedule["pipeline"] == "live"
        assert re.match(r"^\d{4}-\d\d-\d\dT(16|17):00:00\.000000Z$", schedule["next_fire"])

        proc = _ahgd("run", "idle", "--state-dir", state)            # through the daemon
        assert (proc.returncode, proc.stderr) == (1, refused)
        assert query(state, "SELECT run_id FROM runs WHERE pipeline = 'idle'") == []
        proc = _ahgd("run", "idle", "--force", "--state-dir", state)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert query(state, "SELECT trigger, state FROM runs WHERE pipeline = 'idle'") == [
            ("manual", "COMPLETED")]
    finally:
        assert d.stop() == 0
    assert waiting.exists()                                           # still not taken

    proc = _ahgd("run", "idle", "--config", master, "--state-dir", state)   # no daemon: here
    assert (proc.returncode, proc.stderr) == (1, refused)
    proc = _ahgd("run", "idle", "--force", "--config", master, "--state-dir", state)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert query(state, "SELECT COUNT(*) FROM runs WHERE pipeline = 'idle' AND state = "
                        "'COMPLETED'") == [(2,)]
