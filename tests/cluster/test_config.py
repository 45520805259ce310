"""``daemon.executor`` and ``daemon.object_store`` in the master file, checked by ``ahgd config
check``; Dask imported only when asked for; outputs in the object store verified by hash."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from ahgd_daemon.cli import main

from .processes import REPO, child_env

PIPELINE = "pipeline: {name: p}\nstages:\n  - {name: x, type: extractor, class: m.X}\n"


def check(tmp_path, daemon: str) -> tuple[int, str]:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    master = tmp_path / "master.yaml"
    master.write_text("pipelines:\n  - {name: p, config_file: p.yaml}\n" + textwrap.dedent(daemon))
    result = CliRunner().invoke(main, ["config", "check", "--no-import", str(master),
                                       "--state-dir", str(tmp_path / "s")])
    return result.exit_code, result.output


@pytest.mark.parametrize("daemon, expected", [
    ("daemon:\n  executor: {type: dask}\n",
     "type: dask needs `scheduler: tcp://HOST:8786`"),
    ("daemon:\n  executor: {type: dask, scheduler: 'tcp://10.0.0.5:8786'}\n",
     "executor type dask needs daemon.object_store"),
    ("daemon:\n  executor: {type: dask, scheduler: 'http://10.0.0.5'}\n",
     "is not a Dask scheduler address; use tcp://HOST:PORT"),
    ("daemon:\n  executor: {type: dask, scheduler: 'tls://h:8786'}\n"
     "  object_store: {url: 's3://b/p'}\n", "is a TLS address: add security"),
    ("daemon:\n  executor: {type: process, scheduler: 'tcp://h:8786'}\n",
     "scheduler only apply to `type: dask`"),
    ("daemon:\n  executor: {type: dask, scheduler: 'tcp://h:8786'}\n"
     "  object_store: {url: 's3://b/p', aws_secret_access_key: abc}\n",
     "credentials never go in the YAML; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ("daemon:\n  executor: {type: dask, scheduler: 'tcp://h:8786'}\n"
     "  object_store: {url: 'bucket/prefix'}\n", "is not a bucket URL; use s3://BUCKET"),
    # found only when the daemon first used the bucket: every attempt failed, the daemon up
    ("daemon:\n  executor: {type: dask, scheduler: 'tcp://h:8786'}\n"
     "  object_store: {url: 's3://bucket/p', endpoint_url: 'minio.internal:9000'}\n",
     "'minio.internal:9000' is not an endpoint URL; use https://HOST:PORT"),
    ("daemon:\n  executor: {type: dask, scheduler: 'tcp://h:8786'}\n"
     "  object_store: {url: 's3://bucket/p', credentials_file: /nonexistent/s3-credentials}\n",
     "daemon.object_store.credentials_file: '/nonexistent/s3-credentials' does not exist"),
])
def test_config_check_refuses_a_bad_cluster_setting_saying_what_to_write(tmp_path, daemon, expected):
    code, out = check(tmp_path, daemon)
    assert code == 1, out
    assert expected in out


def test_config_check_accepts_a_dask_executor_with_its_bucket(tmp_path):
    code, out = check(tmp_path, """\
        daemon:
          executor: {type: dask, scheduler: 'tcp://10.0.0.5:8786', on_scheduler_lost: local}
          object_store: {url: 's3://ahgd/outputs', endpoint_url: 'https://minio.internal:9000'}
        """)
    assert code == 0, out


def test_a_stage_may_say_executor_local(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "pipeline: {name: p}\nstages:\n  - {name: x, type: extractor, class: m.X, "
        "executor: local}\n  - {name: y, type: loader, class: m.Y, executor: remote}\n")
    master = tmp_path / "master.yaml"
    master.write_text("pipelines:\n  - {name: p, config_file: p.yaml}\n")
    result = CliRunner().invoke(main, ["config", "check", "--no-import", str(master),
                                       "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert "stages[1].executor: 'remote' is not an executor; use one of process, local, " \
           "inprocess" in result.output
    assert "stages[0]" not in result.output


def test_help_and_the_local_executor_never_import_dask_or_boto3(tmp_path):
    code = textwrap.dedent(f"""\
        import sys
        from click.testing import CliRunner
        from ahgd_daemon.cli import main
        assert CliRunner().invoke(main, ["--help"]).exit_code == 0
        from pathlib import Path
        from ahgd_daemon.executor import build_executor
        from pipelines.config.models import DaemonSettings
        ex = build_executor(DaemonSettings(), workers=1, env={{}}, stdout=None,
                            state_dir=Path({str(tmp_path)!r}), alert=print, resolve=print)
        ex.shutdown()
        print(sorted(m for m in ("dask", "distributed", "boto3", "botocore") if m in sys.modules))
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=child_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_dask_setting_under_type_process_is_refused_but_a_default_is_not(tmp_path):
    code, out = check(tmp_path, "daemon:\n  executor: {type: process, on_scheduler_lost: local}\n")
    assert code == 1 and "on_scheduler_lost only apply to `type: dask`" in out
    code, out = check(tmp_path, "daemon:\n  executor: {type: process, on_scheduler_lost: wait}\n")
    assert code == 0, out  # what a dumped configuration holds: the default, no setting
