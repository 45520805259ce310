"""The read-only HTTP status server: every endpoint on a real daemon, binding rules, tokens.

The daemon runs as a subprocess with ``--http 127.0.0.1:0`` (loopback only, any free
port, read from its ``http_status`` log line).  Two CSVs are dropped: one lacks a column
the extract stage requires (its run fails), one has it (its run completes).
"""

from __future__ import annotations

import http.client
import json
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ahgd_daemon.httpstatus import StatusServer, StatusSources, check_bind, is_loopback
from pipelines.errors import ConfigError

from .harness import Daemon, ahgd_exe, drop_csv, env, query, wait_until, write_config

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"


def _get(port: int, path: str, method: str = "GET", headers: dict | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _port(d: Daemon) -> int:
    def found():
        assert d.proc.poll() is None, d.output()
        return next((r["port"] for r in d.records() if r.get("event") == "http_status"), None)

    return wait_until(found, 30, "the http_status log line")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One daemon with a failed and a completed run, serving HTTP, for the endpoint tests."""
    tmp = tmp_path_factory.mktemp("http")
    state = tmp / "state"
    state.mkdir()
    config = write_config(tmp, extract={"required": ["b"]},
                          daemon=", monitoring: {sample_interval: PT0.2S}")
    d = Daemon(config, state, args=["--http", "127.0.0.1:0"]).wait_ready()
    try:
        port = _port(d)
        inbox = state / "inbox" / "csvpipe"
        drop_csv(inbox, "good.csv")
        bad = inbox / "bad.csv"
        (inbox / ".bad.part").write_text("a,c\n1,2\n")
        (inbox / ".bad.part").rename(bad)
        wait_until(lambda: len(query(state, "SELECT 1 FROM runs WHERE state IN "
                                            "('COMPLETED', 'FAILED')")) == 2, 60, "both runs")
        yield d, state, port
    finally:
        d.stop()


def test_healthz_is_ok_once_recovered(served):
    _, _, port = served
    status, headers, body = _get(port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["cache-control"] == "no-store"


def test_metrics_parse_and_count_the_runs(served):
    _, _, port = served
    status, headers, body = _get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    p = ("pipeline", "csvpipe")
    assert values[("ahgd_runs_total", (p, ("state", "COMPLETED")))] == 1
    assert values[("ahgd_runs_total", (p, ("state", "FAILED")))] == 1
    assert values[("ahgd_files_total", (("outcome", "taken"), p))] == 2
    assert values[("ahgd_alerts_total", (("severity", "error"),))] == 1   # pipeline.failing
    assert values[("ahgd_stage_attempts_total", (("outcome", "FAILED"), p, ("stage", "extract")))] == 1
    assert values[("ahgd_event_log_append_seconds_count", ())] > 10


def test_dashboard_document(served):
    d, state, port = served
    status, _, body = _get(port, "/api/dashboard")
    doc = json.loads(body)
    assert status == 200
    assert doc["daemon"]["pid"] == d.proc.pid and doc["daemon"]["healthy"] is True
    assert doc["daemon"]["pipelines"] == ["csvpipe"]
    assert sorted(r["state"] for r in doc["recent_runs"]["csvpipe"]) == ["COMPLETED", "FAILED"]
    assert doc["queue"] == {"pending_runs": 0, "running_runs": 0, "running_stages": 0,
                            "parked_runs": 0}
    assert {disk["path"] for disk in doc["system"]["disks"]} == {str(state)}
    # both warm workers, sampled (the pool starts them in the background)
    wait_until(lambda: len(json.loads(_get(port, "/api/dashboard")[2])["system"]["workers"]) == 2,
               20, "a sample with both workers")


def test_runs_and_one_run_with_its_events(served):
    _, state, port = served
    status, _, body = _get(port, "/api/runs?limit=10")
    runs = json.loads(body)["runs"]
    assert status == 200 and len(runs) == 2
    failed = next(r for r in runs if r["state"] == "FAILED")
    assert failed["failed_stage"] == "extract"
    assert [(a["stage"], a["state"]) for a in failed["attempts"]] == [("extract", "FAILED")]
    assert "missing columns: b" in failed["attempts"][0]["error"]
    done = next(r for r in runs if r["state"] == "COMPLETED")
    assert [a["stage"] for a in done["attempts"]] == ["extract", "transform", "load"]
    assert len(json.loads(_get(port, "/api/runs?limit=1")[2])["runs"]) == 1
    assert json.loads(_get(port, "/api/runs?pipeline=nosuch")[2]) == {"runs": []}
    status, _, body = _get(port, f"/api/runs/{failed['run_id']}")
    doc = json.loads(body)
    assert status == 200 and doc["run"]["run_id"] == failed["run_id"]
    types = [e["type"] for e in doc["events"]]
    assert types[:3] == ["file.arrived", "run.requested", "run.started"]
    assert types.index("stage.failed") < types.index("run.failed")
    assert len(doc["events"]) == query(state, "SELECT COUNT(*) FROM events WHERE run_id = ?",
                                       (failed["run_id"],))[0][0]


@pytest.mark.parametrize("path, status, error", [
    ("/api/runs/nosuch", 404, "no run 'nosuch' in the event log; list runs with /api/runs"),
    ("/api/runs?limit=abc", 400, "limit='abc' is not a whole number from 1 to 1000; use e.g. "
                                 "?limit=50"),
    ("/api/runs?limit=0", 400, "limit='0' is not a whole number from 1 to 1000; use e.g. "
                               "?limit=50"),
    ("/nosuch", 404, "no page '/nosuch'; try /, /healthz, /metrics, /api/dashboard, /api/runs, "
                     "/api/runs/RUN_ID or /status"),
])
def test_bad_requests_say_what_to_do(served, path, status, error):
    got, _, body = _get(served[2], path)
    assert (got, json.loads(body)) == (status, {"error": error})


def test_page_is_self_contained_html(served):
    status, headers, body = _get(served[2], "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["content-security-policy"]
    text = body.decode()
    assert "<html" in text and "http://" not in text and "https://" not in text
    status, headers, body = _get(served[2], "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(text.encode())


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_writes_are_refused_and_change_nothing(served, method):
    _, state, port = served
    before = query(state, "SELECT COUNT(*), MAX(seq) FROM events")
    status, headers, body = _get(port, "/api/runs", method=method,
                                 headers={"Content-Type": "application/json"},
                                 body=json.dumps({"pipeline": "csvpipe"}).encode())
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert json.loads(body)["error"].startswith(f"{method} is refused: the status server is "
                                                "read-only")
    assert query(state, "SELECT COUNT(*), MAX(seq) FROM events") == before


def test_a_token_is_checked_on_every_request(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    d = Daemon(write_config(tmp_path), state,
               args=["--http", "127.0.0.1:0", "--http-token-file", str(token_file)]).wait_ready()
    try:
        port = _port(d)
        for path in ("/healthz", "/metrics", "/api/runs", "/"):
            status, headers, body = _get(port, path)
            assert status == 401 and headers["www-authenticate"] == 'Bearer realm="ahgd"'
            assert json.loads(body) == {"error": "a token is needed: send 'Authorization: "
                                                 "Bearer <token>' or add ?token=<token>"}
        assert _get(port, "/healthz", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _get(port, "/healthz?token=wrong")[0] == 401
        assert _get(port, "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert _get(port, f"/api/dashboard?token={TOKEN}")[0] == 200
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("args, message", [
    (["--http", "0.0.0.0:8787"],
     "--http 0.0.0.0:8787: 0.0.0.0 is not a loopback address. The status server shows run "
     "errors and file paths, so it listens on 127.0.0.1 or [::1] unless you also give "
     "--http-allow-remote with a token (--http-token-file FILE or AHGD_HTTP_TOKEN; in the "
     "master file daemon.http_allow_remote and daemon.http_token_file); or keep it on loopback "
     "behind a reverse proxy"),
    (["--http", "0.0.0.0:8787", "--http-allow-remote"],
     "--http-allow-remote (daemon.http_allow_remote) needs a token, checked on every request: "
     "put it in a file readable by the daemon only and pass --http-token-file FILE "
     "(daemon.http_token_file), or set AHGD_HTTP_TOKEN"),
    (["--http", "localhost"], "--http 'localhost' is not a listen address; use HOST:PORT such "
                              "as 127.0.0.1:8787 (port 0 picks a free port)"),
])
def test_a_non_loopback_address_is_refused_before_anything_starts(tmp_path, args, message):
    state = tmp_path / "state"
    proc = subprocess.run([*ahgd_exe(), "daemon", "--config", str(write_config(tmp_path)),
                           "--state-dir", str(state), *args], capture_output=True, text=True,
                          timeout=60, env=env())
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (state / "history.db").exists()


def test_loopback_rules():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.1"))
    assert check_bind("[::1]:0", allow_remote=False, token=None) == ("::1", 0)
    assert check_bind("0.0.0.0:9", allow_remote=True, token="t") == ("0.0.0.0", 9)
    with pytest.raises(ConfigError):
        check_bind("127.0.0.1:99999", allow_remote=False, token=None)


def test_healthz_is_503_while_recovering_and_errors_are_500(tmp_path):
    health = {"value": (False, "recovering interrupted runs")}

    def broken() -> dict:
        raise RuntimeError("the dashboard broke")

    server = StatusServer("127.0.0.1:0", StatusSources(
        dashboard=broken, metrics=lambda: "", health=lambda: health["value"],
        status=dict, history_db=lambda: str(tmp_path / "none.db")))
    server.start()
    try:
        assert _get(server.port, "/healthz")[::2] == (503, b"recovering interrupted runs\n")
        health["value"] = (True, "ok")
        assert _get(server.port, "/healthz")[::2] == (200, b"ok\n")
        status, _, body = _get(server.port, "/api/dashboard")
        assert (status, json.loads(body)) == (500, {"error": "RuntimeError: the dashboard broke"})
    finally:
        server.stop()


def test_unknown_methods_bad_limits_and_foreign_hosts_are_refused(served):
    port = served[2]
    status, headers, body = _get(port, "/", method="PROPFIND")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert json.loads(body)["error"].startswith("PROPFIND is refused")
    status, _, body = _get(port, "/api/runs?limit=%C2%B2")    # '²' is a digit to str.isdigit
    assert status == 400 and json.loads(body)["error"].startswith("limit='²' is not a whole")
    # a DNS-rebinding page reaches us as evil.example: without a token, loopback names only
    status, _, body = _get(port, "/api/dashboard", headers={"Host": "evil.example"})
    assert status == 421 and "127.0.0.1, [::1] or localhost" in json.loads(body)["error"]
    assert _get(port, "/healthz", headers={"Host": f"localhost:{port}"})[0] == 200


def test_token_from_the_master_file_with_a_plus_sign(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text("a+b/c=\n")             # base64 tokens carry '+', '/' and '='
    master = write_config(tmp_path, daemon=f", http_token_file: {token_file}")
    d = Daemon(master, state, args=["--http", "127.0.0.1:0"]).wait_ready()
    try:
        port = _port(d)
        assert _get(port, "/healthz")[0] == 401
        assert _get(port, "/healthz?token=a%2Bb%2Fc%3D")[0] == 200
        assert _get(port, "/healthz?token=a+b/c=")[0] == 200
        assert _get(port, "/healthz", headers={"Authorization": "Bearer a+b/c="})[0] == 200
    finally:
        assert d.stop() == 0


def test_a_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([*ahgd_exe(), "daemon", "--config", str(write_config(tmp_path)),
                               "--state-dir", str(tmp_path / "state"), "--http",
                               f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60,
                              env=env())
    assert proc.returncode == 1
    assert (f"cannot listen on 127.0.0.1:{port} for --http: Address already in use; another "
            "process may hold that port") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_history_is_read_through_a_uri_that_keeps_odd_paths(tmp_path):
    from ahgd_daemon.runs_api import connect_ro, runs_document
    from state import EventLog, new_event

    odd = tmp_path / "st?ate#1%41"
    with EventLog.open(odd) as log:
        log.append(new_event("run.requested", "r1", pipeline="p", trigger="manual"))
    with connect_ro(str(odd / "history.db")) as conn:
        assert [r["run_id"] for r in runs_document(conn)["runs"]] == ["r1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st?ate#1%41"]


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the HTTP token file {path}: No such file or directory; create it (e.g. "
           "`openssl rand -hex 32 > FILE; chmod 600 FILE`) or fix its permissions"),
    ("  \n", "the HTTP token file {path} is empty; put a long random token in it (e.g. "
             "`openssl rand -hex 32 > FILE`)"),
])
def test_a_missing_or_empty_token_file_is_refused(tmp_path, content, message):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run([*ahgd_exe(), "daemon", "--config", str(write_config(tmp_path)),
                           "--state-dir", str(tmp_path / "state"), "--http", "127.0.0.1:0",
                           "--http-token-file", str(path)], capture_output=True, text=True,
                          timeout=60, env=env())
    assert proc.returncode == 1
    assert message.format(path=path) in proc.stderr
