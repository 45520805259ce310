"""The default state directory: ``./ahgd-state``, or a ``./state`` of an earlier version
(issue 13, item 1)."""

from __future__ import annotations

import pytest

from state.statedir import LegacyStateDir, resolve_state_dir


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_default_is_ahgd_state_even_beside_a_folder_named_state(here):
    (here / "state").mkdir()  # the user's own folder: not ahgd's to fill
    assert resolve_state_dir(None, {}) == here / "ahgd-state"


def test_a_history_in_dot_state_is_still_found_with_a_note(here):
    (here / "state").mkdir()
    (here / "state" / "history.db").touch()
    notes: list[str] = []
    assert resolve_state_dir(None, {}, note=notes.append) == here / "state"
    assert len(notes) == 1 and "mv state ahgd-state" in notes[0]
    with pytest.warns(LegacyStateDir, match="the state directory found there"):
        assert resolve_state_dir(None, {}) == here / "state"


def test_the_new_default_wins_once_it_exists_and_a_package_is_never_taken(here):
    (here / "state").mkdir()
    (here / "state" / "history.db").touch()
    (here / "state" / "__init__.py").touch()  # a clone of this repository: the package
    assert resolve_state_dir(None, {}) == here / "ahgd-state"
    (here / "state" / "__init__.py").unlink()
    (here / "ahgd-state").mkdir()
    assert resolve_state_dir(None, {}) == here / "ahgd-state"
    assert resolve_state_dir(None, {"AHGD_STATE_DIR": "state"}) == here / "state"
