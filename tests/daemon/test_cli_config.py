"""`ahgd config check` lists every problem; `ahgd config schema` is JSON Schema."""

from __future__ import annotations

import json
import subprocess

from .harness import ahgd_exe, env


def test_config_check_lists_every_error_of_every_file(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("pipeline: {name: a}\nstages:\n  - {name: x, type: extractr, class: m.X, timout: PT1M}\n")
    b = tmp_path / "b.yaml"
    b.write_text("pipeline: {name: b}\nstages:\n  - {name: y, type: loader, class: m.Y, timeout: soon}\n")
    proc = subprocess.run([*ahgd_exe(), "config", "check", "--no-import", str(a), str(b),
                           "--state-dir", str(tmp_path / "s")], capture_output=True, text=True,
                          timeout=60, env=env())
    assert proc.returncode == 1
    err = proc.stderr
    assert f"{a}:3: stages[0].type: 'extractr' is not a stage type; use one of extractor, " \
           "transformer, validator, loader" in err
    assert f"{a}:3: stages[0].timout: unknown key 'timout'; did you mean 'timeout'?" in err
    assert f"{b}:3: stages[0].timeout: 'soon' is not a duration; use ISO 8601 such as PT30M, " \
           "PT2H or P1D, or a number of seconds such as 90" in err
    assert "3 problem(s) found" in err


def test_config_check_accepts_the_bundled_configuration(tmp_path):
    from ahgd_daemon.demo import MASTER

    proc = subprocess.run([*ahgd_exe(), "config", "check", str(MASTER), "--state-dir",
                           str(tmp_path / "s")], capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: 1 file(s) valid")


def test_config_schema_is_json_schema(tmp_path):
    proc = subprocess.run([*ahgd_exe(), "config", "schema"], capture_output=True, text=True,
                          timeout=60, env=env())
    schema = json.loads(proc.stdout)
    assert "oneOf" in schema and schema["$schema"].startswith("https://json-schema.org/")
