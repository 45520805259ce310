"""A quarantined file's ``.reason.json`` says what to do for its cause (issue 13, item 3).

"Correct the file" fits a file that was found bad; a check that failed, hung
or crashed found nothing wrong with the file, and an empty file needs its
content, not a correction.  The real claimer, real check children.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ahgd_daemon.dropfolder import Claimer, Folder
from state import EventLog

from .test_input_checks import claim_bounded

FILE = "correct the file and drop it into the folder again"
CHECK = ("the file may well be fine: fix the input check (what it printed is in the daemon's "
         "log), then drop the file into the folder again")
SLOW = ("the file may well be fine: make the check faster or raise input_check.timeout, then "
        "drop the file into the folder again")
EMPTY = ("drop the file again with its content: write it under a temporary name (.x, *.part) "
         "and rename it into the folder when it is complete")


@pytest.fixture
def claimer(tmp_path: Path):
    """A claimer on a fresh state directory, and the folder files are dropped into."""
    log = EventLog.open(tmp_path / "state")
    (tmp_path / "inbox").mkdir()
    yield Claimer(log, tmp_path / "state"), tmp_path / "inbox"
    log.close()


@pytest.mark.parametrize("check, content, fix", [
    ("chatty", "a,b\n1,2\n", FILE),    # the check says the file is bad
    ("raises", "a,b\n1,2\n", CHECK),   # the check raised
    ("crash", "a,b\n1,2\n", CHECK),    # the check's process was killed
    ("hang", "a,b\n1,2\n", SLOW),      # the check ran past its timeout
    (None, "", EMPTY),                 # nothing to check: an empty file
], ids=["file-found-bad", "check-raised", "check-killed", "check-timed-out", "empty-file"])
def test_the_fix_fits_the_cause(claimer, check, content, fix):
    claim, inbox = claimer
    (inbox / "x.csv").write_text(content)
    # the timeout counts from the start of the check's child (a fresh python importing ahgd):
    # on a loaded host that alone can take over a second, so only the hanging check gets 1 s
    folder = Folder("p", inbox, "*.csv", stable_for=0.0,
                    check_timeout=1.0 if check == "hang" else 60.0,
                    check_callable=f"tests.daemon.checks.{check}" if check else None)
    assert claim_bounded(claim, folder, inbox / "x.csv").outcome == "quarantined"
    info = json.loads((claim.state_dir / "quarantine" / "p" / "x.csv.reason.json").read_text())
    assert info["fix"] == fix
