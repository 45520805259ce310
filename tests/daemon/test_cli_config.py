"""`ahgd config check` lists every problem; `ahgd config schema` is JSON Schema."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap

from .harness import REPO, Daemon, ahgd_exe, env, wait_until


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
           "PT2H or P1D, a number of seconds such as 90, or a number with a unit such as 30m, " \
           "12h or 7d" in err
    assert "3 problem(s) found" in err


def test_config_check_accepts_the_bundled_configuration(tmp_path):
    from ahgd_daemon.demo import MASTER

    proc = subprocess.run([*ahgd_exe(), "config", "check", str(MASTER), "--state-dir",
                           str(tmp_path / "s")], capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 0, proc.stderr
    # the master file and the three pipeline files it lists were all checked
    assert proc.stdout.splitlines() == ["ok: 4 file(s) valid:", f"  {MASTER}"] + [
        f"  {MASTER.parent / name}.yaml"
        for name in ("seifa_sa2", "mortality_regions", "sa2_health_profile")]


def test_config_schema_is_json_schema(tmp_path):
    proc = subprocess.run([*ahgd_exe(), "config", "schema"], capture_output=True, text=True,
                          timeout=60, env=env())
    schema = json.loads(proc.stdout)
    assert "oneOf" in schema and schema["$schema"].startswith("https://json-schema.org/")


def _check(tmp_path, *files, extra_env=None):
    return subprocess.run([*ahgd_exe(), "config", "check", *map(str, files), "--state-dir",
                           str(tmp_path / "s")], capture_output=True, text=True, timeout=60,
                          env=env(extra_env))


def test_config_check_reports_import_problems_beside_the_other_problems(tmp_path):
    """One pass: a missing module and a missing class are reported with the schema problems,
    in the pipeline file a master file lists, and the summary counts every file read."""
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: p}
        triggers:
          - {type: drop_folder, path: /tmp/in, input_check: {callable: pipelines.ahgd.seifa.no_check}}
        stages:
          - {name: extract, type: extractor, class: no_such_module_g4.Extractor, timout: PT1M}
          - {name: load, type: loader, class: pipelines.ahgd.seifa.SeifaLoadr, retry_attempts: -1}
          - {name: other, type: loader, class: not-a-dotted-path}
        """))
    master = tmp_path / "m.yaml"
    master.write_text("pipelines:\n  - {name: p, config_file: p.yaml}\n")
    proc = _check(tmp_path, master)
    assert proc.returncode == 1
    p = tmp_path / "p.yaml"
    assert proc.stderr.splitlines() == [
        f"{p}:3: triggers[0].input_check.callable: module 'pipelines.ahgd.seifa' has no "
        "attribute 'no_check'",
        f"{p}:5: stages[0].timout: unknown key 'timout'; did you mean 'timeout'?",
        f"{p}:5: stages[0].class: cannot import module 'no_such_module_g4': No module named "
        f"'no_such_module_g4' (it is looked for in the working directory, {os.getcwd()}, and on "
        "PYTHONPATH, after the installed packages: run ahgd from the folder that holds it, or "
        "add that folder to PYTHONPATH)",
        f"{p}:6: stages[1].retry_attempts: must be at least 0, got -1",
        f"{p}:6: stages[1].class: module 'pipelines.ahgd.seifa' has no attribute 'SeifaLoadr'; "
        "did you mean 'SeifaLoader'?",
        f"{p}:7: stages[2].class: 'not-a-dotted-path' is not a dotted import path; use "
        "package.module.Name such as mypackage.seifa.SeifaExtractor",
        "6 problem(s) found in 2 file(s) checked:", f"  {master}", f"  {p}"]


def test_a_users_folder_named_like_ahgds_package_is_explained(tmp_path):
    """A new user keeps stage modules in a folder called pipelines/ beside their YAML and
    writes pipelines.my_stages.Extract: that name is ahgd's own package, so the check says
    so and how to name it instead; a misspelt module of ahgd's gets a did-you-mean."""
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "my_stages.py").write_text("class Extract:\n    pass\n")
    yaml = tmp_path / "pipelines" / "demo.yaml"
    yaml.write_text("pipeline: {name: demo}\nstages:\n"
                    "  - {name: extract, type: extractor, class: pipelines.my_stages.Extract}\n"
                    "  - {name: load, type: loader, class: pipelines.loader.WarehouseLoader}\n")
    proc = subprocess.run([*ahgd_exe(), "config", "check", "pipelines/demo.yaml", "--state-dir",
                           str(tmp_path / "s")], capture_output=True, text=True, timeout=60,
                          env=env(), cwd=tmp_path)
    assert proc.returncode == 1
    folder = tmp_path / "pipelines"
    assert proc.stderr.splitlines()[:2] == [
        "pipelines/demo.yaml:3: stages[0].class: cannot import module 'pipelines.my_stages': No "
        f"module named 'pipelines.my_stages' ('pipelines' is ahgd's own package, so your folder "
        f"{folder} cannot be imported under that name: rename the folder, for example to "
        "my_pipelines, and write the class as my_pipelines.my_stages.<Class>; or write it as "
        f"my_stages.<Class> and run ahgd with PYTHONPATH={folder})",
        "pipelines/demo.yaml:4: stages[1].class: cannot import module 'pipelines.loader': No "
        "module named 'pipelines.loader'; did you mean 'pipelines.loaders'?"]
    # what the first message says to do works
    (tmp_path / "pipelines").rename(tmp_path / "my_pipelines")
    yaml = tmp_path / "my_pipelines" / "demo.yaml"
    yaml.write_text(yaml.read_text().replace("pipelines.my_stages", "my_pipelines.my_stages")
                    .replace("pipelines.loader.", "pipelines.loaders."))
    # named with -c, as `ahgd daemon` and `ahgd run` take it
    proc = subprocess.run([*ahgd_exe(), "config", "check", "-c", "my_pipelines/demo.yaml",
                           "--state-dir", str(tmp_path / "s")], capture_output=True, text=True,
                          timeout=60, env=env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: 1 file(s) valid")


def _reload_failures(daemon: Daemon) -> list[dict]:
    return [r for r in daemon.records() if r.get("event") == "daemon.config_reload_failed"
            and r.get("alert_state") == "firing"]


def _package(site, body: str) -> None:
    pkg = site / "g4freshpkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "checks.py").write_text(textwrap.dedent(body))


def test_a_reload_imports_stage_modules_as_they_are_now_not_as_the_daemon_remembers(tmp_path):
    """The daemon imported the input check's module at start; the module then changes on disk.
    A reload must judge the module as a worker would import it now, both ways: a callable
    that is gone fails the reload, and a callable added since is found."""
    site, state = tmp_path / "site", tmp_path / "state"
    _package(site, """\
        def first_check(path):
            return None
        """)
    pipe = tmp_path / "fresh.yaml"
    yaml_text = textwrap.dedent("""\
        pipeline: {name: fresh}
        triggers:
          - {type: drop_folder, path: "${state_dir}/inbox/fresh", input_check: {callable: g4freshpkg.checks.CHECK}}
        stages:
          - {name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor}
        """)
    pipe.write_text(yaml_text.replace("CHECK", "first_check"))
    master = tmp_path / "master.yaml"
    master.write_text("pipelines:\n  - {name: fresh, config_file: fresh.yaml}\n")
    extra = {"PYTHONPATH": f"{REPO}:{site}"}
    d = Daemon(master, state, extra_env=extra).wait_ready()
    try:
        # gone from the module (the file changes size, so no stale bytecode is trusted)
        _package(site, """\
            def second_check(path):
                return None  # renamed
            """)
        d.signal(signal.SIGHUP)
        failed = wait_until(lambda: _reload_failures(d), 30, "the reload to fail")
        assert ("module 'g4freshpkg.checks' has no attribute 'first_check'; did you mean "
                "'second_check'?") in failed[0]["error"]
        pipe.write_text(yaml_text.replace("CHECK", "second_check"))  # added since the start
        d.signal(signal.SIGHUP)
        wait_until(lambda: any(r.get("event") == "config_reloaded" for r in d.records())
                   or len(_reload_failures(d)) > 1, 30, "the second reload")
        assert [r["error"] for r in _reload_failures(d)] == [failed[0]["error"]]
    finally:
        assert d.stop() == 0
    assert _check(tmp_path, master, extra_env=extra).returncode == 0
