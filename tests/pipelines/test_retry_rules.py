"""What is retried, and why it is written down (issue 13, item 4), and the configuration
checks that go with it (items 4 and 10).

Errors no retry can fix (programming errors, errors in the SQL, bad data, bad
configuration) fail at once; I/O errors, timeouts and dead workers are retried;
a stage says otherwise with ``retry_on`` / ``no_retry_on`` or ``RetryLater``.
Every ``stage.failed`` records ``"retry": {"decision": ..., "why": ...}``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pipelines import ConfigError, StageConfig, load_pipeline
from pipelines.config import check_files
from state import EventLog

from .retry_pipelines import FailsThenWorks
from .test_readme_examples import BASIC, _query, _run, _script, example_env  # noqa: F401


def failed_events(state_dir: Path) -> list[dict]:
    """The payload of every stage.failed / stage.timed_out, in order."""
    with EventLog.open(state_dir) as log:
        rows = log.query("SELECT payload FROM events WHERE type IN ('stage.failed', "
                         "'stage.timed_out') ORDER BY seq")
    return [json.loads(r[0]) for r in rows]


def retry_waits(state_dir: Path) -> list[float]:
    with EventLog.open(state_dir) as log:
        return [r[0] for r in log.query("SELECT json_extract(payload, '$.delay_s') FROM events "
                                        "WHERE type = 'stage.retrying' ORDER BY seq")]


# --------------------------------------------------------------------------- the README's example


def test_the_readme_first_example_fails_at_once_on_its_attribute_error(tmp_path, example_env):
    """The original README's first example, as written, calls a helper it never defines:
    an AttributeError, which no retry can fix.  It used to be retried three times (38 s)."""
    _run(tmp_path, example_env, "basic_as_written", _script(BASIC))
    state = tmp_path / "state"
    assert _query(state, "SELECT state FROM run_history") == [("FAILED",)]
    assert _query(state, "SELECT stage, COUNT(*) FROM events WHERE type = 'stage.started' "
                         "GROUP BY stage") == [("extract", 1)]
    assert _query(state, "SELECT COUNT(*) FROM events WHERE type = 'stage.retrying'") == [(0,)]
    why = "AttributeError is a programming error: a retry would run the same code"
    (failed,) = failed_events(state)
    assert failed["retry"] == {"decision": False, "why": why}
    (error,) = _query(state, "SELECT error FROM run_history")[0]
    assert error == (f"stage 'extract' failed after 1 attempt(s) (not retried: {why}): "
                     "AttributeError: 'HealthDataPipeline' object has no attribute "
                     "'extract_health_data'")


# --------------------------------------------------------------------------- by the error's kind


def test_a_duckdb_binder_error_is_not_retried(state_dir):
    ctx = FailsThenWorks(failures=["binder"], state_dir=state_dir, retry_delay=0.01).run()
    assert ctx.state == "FAILED"
    (failed,) = failed_events(state_dir)   # one attempt, although retry_attempts is 3
    assert failed["error_type"] == "BinderException" and failed["retryable"] is False
    assert failed["retry"] == {"decision": False, "why": "duckdb.BinderException is an error in "
                               "the SQL: a retry would run the same query"}
    assert ctx.error.startswith("stage 'work' failed after 1 attempt(s) (not retried: "
                                "duckdb.BinderException is an error in the SQL")


def test_an_io_error_is_retried_and_each_decision_says_why(state_dir):
    ctx = FailsThenWorks(failures=["oserror", "oserror"], state_dir=state_dir,
                         retry_delay=0.01).run()
    assert ctx.state == "COMPLETED" and ctx.get_output("work") == {"attempts": 3}
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": True, "why": "OSError is an I/O error, which may pass"}] * 2


def test_a_worker_that_died_is_retried(state_dir):
    ctx = FailsThenWorks(failures=["worker_dies"], state_dir=state_dir, retry_delay=0.01).run()
    assert ctx.state == "COMPLETED" and ctx.get_output("work") == {"attempts": 2}
    (failed,) = failed_events(state_dir)
    assert failed["error_type"] == "WorkerDied"
    assert failed["retry"] == {"decision": True,
                               "why": "a worker process that died may not die again"}


def test_retries_used_up_say_so_and_the_message_keeps_its_form(state_dir):
    ctx = FailsThenWorks(failures=["oserror"] * 5, state_dir=state_dir, retry_delay=0.01,
                         max_retries=1).run()
    assert ctx.state == "FAILED"
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": True, "why": "OSError is an I/O error, which may pass"},
        {"decision": False, "why": "OSError is an I/O error, which may pass, but its 1 retry "
                                   "is used up"}]
    assert ctx.error == ("stage 'work' failed after 2 attempt(s): OSError: [Errno 5] "
                         "Input/output error: '/mnt/share/seifa.csv'")


# --------------------------------------------------------------------------- the stage decides


def test_retry_on_makes_a_programming_error_retried(state_dir):
    cfg = StageConfig("work", retry_attempts=2, retry_delay=0.01, retry_on=["LookupError"])
    ctx = FailsThenWorks(failures=["keyerror"], state_dir=state_dir, executor="inprocess",
                         stage_configs={"work": cfg}).run()
    assert ctx.state == "COMPLETED"
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": True, "why": "KeyError (a subclass of LookupError) is in the stage's "
                                  "retry_on"}]


def test_no_retry_on_makes_an_io_error_final(state_dir):
    cfg = StageConfig("work", retry_attempts=3, retry_delay=0.01, no_retry_on=[OSError])
    ctx = FailsThenWorks(failures=["oserror"], state_dir=state_dir, executor="inprocess",
                         stage_configs={"work": cfg}).run()
    assert ctx.state == "FAILED"
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": False, "why": "OSError is in the stage's no_retry_on"}]
    assert "(not retried: OSError is in the stage's no_retry_on)" in ctx.error


def test_the_most_specific_class_named_decides(state_dir):
    cfg = StageConfig("work", retry_attempts=3, retry_delay=0.01, retry_on=["OSError"],
                      no_retry_on=["FileNotFoundError"])
    ctx = FailsThenWorks(failures=["oserror", "filenotfound"], state_dir=state_dir,
                         executor="inprocess", stage_configs={"work": cfg}).run()
    assert ctx.state == "FAILED"
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": True, "why": "OSError is in the stage's retry_on"},
        {"decision": False, "why": "FileNotFoundError is in the stage's no_retry_on"}]


def test_retry_later_waits_as_long_as_the_stage_asks(state_dir):
    # retry_delay is 30 s: a retry after 0.2 s is the stage's own delay
    ctx = FailsThenWorks(failures=["retry_later", "retry_later"], state_dir=state_dir,
                         executor="inprocess", retry_delay=30).run()
    assert ctx.state == "COMPLETED" and ctx.get_output("work") == {"attempts": 3}
    assert retry_waits(state_dir) == [0.2, 0.2]
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": True,
         "why": "the stage asked to be tried again after PT0.2S (RetryLater)"}] * 2


def test_retry_later_counts_against_retry_attempts(state_dir):
    ctx = FailsThenWorks(failures=["retry_later_plain"], state_dir=state_dir,
                         executor="inprocess", max_retries=0).run()
    assert ctx.state == "FAILED"
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": False, "why": "the stage asked to be tried again (RetryLater), but "
                                   "retry_attempts is 0"}]
    assert ctx.error == "stage 'work' failed after 1 attempt(s): the ABS API answered 503"


def test_retry_on_and_no_retry_on_from_yaml(state_dir, tmp_path):
    path = tmp_path / "retries.yaml"
    path.write_text(textwrap.dedent("""\
        pipeline: {name: retries}
        stages:
          - {name: first, type: extractor, class: tests.pipelines.retry_pipelines.FailingExtractor,
             config: {failures: [keyerror, keyerror]}, retry_delay: 0.01, retry_on: [KeyError]}
          - {name: second, type: extractor, class: tests.pipelines.retry_pipelines.FailingExtractor,
             config: {failures: [oserror]}, retry_delay: 0.01, no_retry_on: [OSError]}
        """))
    ctx = load_pipeline(path, state_dir=state_dir).run()
    assert ctx.state == "FAILED" and ctx.failed_stage == "second"
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": True, "why": "KeyError is in the stage's retry_on"},
        {"decision": True, "why": "KeyError is in the stage's retry_on"},
        {"decision": False, "why": "OSError is in the stage's no_retry_on"}]


def test_a_retry_class_by_dotted_path_is_imported_by_the_worker_not_the_engine(state_dir,
                                                                                tmp_path):
    """The daemon builds each stage's config from the loaded file: the dotted names of
    retry_on are not imported there (a module that hangs would hang the engine), only by the
    worker that judges the error."""
    import sys

    path = tmp_path / "retries.yaml"
    path.write_text(textwrap.dedent("""\
        pipeline: {name: busy}
        stages:
          - {name: first, type: extractor, class: tests.pipelines.retry_pipelines.FailingExtractor,
             config: {failures: [busy]}, retry_delay: 0.01,
             retry_on: [tests.pipelines.retry_errors.Busy]}
        """))
    ctx = load_pipeline(path, state_dir=state_dir).run()
    assert ctx.state == "COMPLETED"
    assert [f["retry"] for f in failed_events(state_dir)] == [
        {"decision": True, "why": "tests.pipelines.retry_errors.Busy is in the stage's retry_on"}]
    assert "tests.pipelines.retry_errors" not in sys.modules


# --------------------------------------------------------------------------- configuration


def test_retry_on_names_are_checked_in_python_with_did_you_mean():
    with pytest.raises(ConfigError) as err:
        StageConfig("work", retry_on=["OSErorr"])
    assert str(err.value) == ("stage 'work': retry_on: 'OSErorr' is not a builtin exception; "
                              "did you mean 'OSError'?")
    with pytest.raises(ConfigError) as err:
        StageConfig("work", no_retry_on=["duckdb.BinderExeption"])
    assert str(err.value) == ("stage 'work': no_retry_on: module 'duckdb' has no exception "
                              "class 'BinderExeption'; did you mean 'BinderException'?")
    with pytest.raises(ConfigError) as err:
        StageConfig("work", retry_on=["KeyError"], no_retry_on=[KeyError])
    assert str(err.value) == ("stage 'work': KeyError is in both retry_on and no_retry_on; "
                              "keep each class in one of them")
    assert StageConfig("work", retry_on=[ConnectionError, "duckdb.IOException"]).retry_on == (
        "ConnectionError", "duckdb.IOException")


def test_config_check_names_bad_retry_classes(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        pipeline: {name: p}
        stages:
          - name: extract
            type: extractor
            class: pipelines.ahgd.seifa.SeifaExtractor
            retry_on: [OSErorr, duckdb.BinderExeption, pipelines.InputError]
          - {name: load, type: loader, class: pipelines.ahgd.seifa.SeifaLoader,
             retry_on: [KeyError], no_retry_on: [KeyError]}
        """))
    assert check_files([path]) == [
        f"{path}:6: stages[0].retry_on[0]: 'OSErorr' is not a builtin exception; did you mean "
        "'OSError'?",
        f"{path}:6: stages[0].retry_on[1]: module 'duckdb' has no exception class "
        "'BinderExeption'; did you mean 'BinderException'?",
        f"{path}:6: stages[0].retry_on[2]: InputError is never retried (it says the input is "
        "bad, and a retry would read the same input); leave it out of retry_on",
        f"{path}:7: stages[1]: KeyError is in both retry_on and no_retry_on; keep each class "
        "in one of them"]


def test_config_check_refuses_quarantine_on_a_validator_without_a_class(tmp_path):
    """Such a validator passes its input through unchanged, so it cannot move rows aside:
    every run used to fail, although `ahgd config check` said nothing (item 10)."""
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        pipeline: {name: p}
        stages:
          - {name: extract, type: extractor, class: pipelines.ahgd.seifa.SeifaExtractor}
          - name: check
            type: validator
            validation_rules: {ranges: {irsd_decile: [1, 10]}, quarantine: true}
        """))
    assert check_files([path]) == [
        f"{path}:6: stages[1].validation_rules: quarantine: true needs the validator to have a "
        "class: without one it passes its input on unchanged and cannot move rows aside; give "
        "it a class whose validate() returns a relation, or put these rules on the stage that "
        "makes the table"]


def test_a_validator_with_a_class_may_quarantine(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        pipeline: {name: p}
        stages:
          - {name: extract, type: extractor, class: pipelines.ahgd.seifa.SeifaExtractor}
          - name: validate
            type: validator
            class: pipelines.ahgd.seifa.SeifaValidator
            validation_rules: {ranges: {irsd_decile: [1, 10]}, quarantine: true}
        """))
    assert check_files([path]) == []


def test_parameters_that_do_not_match_the_query_are_the_codes_fault_not_the_datas(tmp_path):
    """DuckDB raises InvalidInputException for a malformed CSV and for a query given other
    parameters than it names alike; only the first is the data's fault."""
    import duckdb

    from pipelines.retries import classify

    con = duckdb.connect()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2,3\n")
    raised = []
    for query, params in (("SELECT $a", {"a": 1, "b": 2}), ("SELECT $a, $b", {"a": 1}),
                          ("SELECT * FROM read_csv($p, strict_mode=true, header=true, columns="
                           "{'a': 'VARCHAR', 'b': 'VARCHAR'})", {"p": str(bad)})):
        with pytest.raises(duckdb.InvalidInputException) as caught:
            con.execute(query, params).fetchall()
        raised.append(classify(caught.value))
    assert [d.retry for d in raised] == [False, False, False]
    assert [d.why.split(": ")[0] for d in raised] == [
        "duckdb.InvalidInputException is an error in the SQL",
        "duckdb.InvalidInputException is an error in the SQL",
        "duckdb.InvalidInputException is a data error"]


def test_a_retry_class_whose_module_hangs_is_reported_and_not_imported_here(tmp_path,
                                                                            monkeypatch):
    """retry_on / no_retry_on classes are imported by the import check's child, as stage
    classes are: a module that hangs when imported is reported as hanging, and the process
    checking the configuration (a daemon loading it) never imports it itself."""
    import sys

    import pipelines.config.imports as imports

    (tmp_path / "hangs_on_import.py").write_text(
        "import time\ntime.sleep(600)\nclass Busy(Exception):\n    pass\n")
    (tmp_path / "my_errors.py").write_text(
        "class Busy(Exception):\n    pass\nclass NotAnError:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(imports, "TIMEOUT_S", 2.0)
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        pipeline: {name: p}
        stages:
          - {name: extract, type: extractor, class: pipelines.ahgd.seifa.SeifaExtractor,
             retry_on: [my_errors.Busy, my_errors.NotAnError],
             no_retry_on: [hangs_on_import.Busy, my_errors.Other]}
        """))
    assert check_files([path]) == [
        f"{path}:4: stages[0].retry_on[1]: 'my_errors.NotAnError' is a class, not an "
        "exception class",
        f"{path}:5: stages[0].no_retry_on[0]: importing module 'hangs_on_import' did not "
        "finish within 2s (does it wait for something, or loop, when imported?); make its "
        "import quick: a worker process imports it before every run",
        f"{path}:5: stages[0].no_retry_on[1]: not checked: the check stopped at module "
        "'hangs_on_import' (its problem is reported beside this one); check again once that "
        "is fixed"]
    assert "hangs_on_import" not in sys.modules and "my_errors" not in sys.modules
