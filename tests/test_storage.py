"""One reading of SQLite storage URLs: what reading a study checks and where the budget lock lives."""
from pathlib import Path

import pytest

import optuna
from optuna.trial import TrialState

from archsearch._storage import BudgetLock, fail_running, sqlite_file


@pytest.mark.parametrize("url, path", [
    ("sqlite:///archsearch.db", Path("archsearch.db")),
    ("sqlite:////tmp/studies/a.db", Path("/tmp/studies/a.db")),
    ("sqlite:///a.db?timeout=5", Path("a.db")),  # query parameters are not part of the file name
    ("sqlite:///:memory:", None),
    ("sqlite://", None),
    ("sqlite:///file:x?mode=memory&uri=true", None),
    ("postgresql://user@127.0.0.1:5432/test", None),
    ("memory", None),
])
def test_sqlite_file(url, path):
    assert sqlite_file(url) == path


def test_budget_lock_files_sit_beside_the_database_and_memory_makes_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with BudgetLock("sqlite:///:memory:", "s").held():
        pass
    assert list(tmp_path.iterdir()) == []  # before, a ':memory:.<key>.lock' file appeared in the cwd
    (tmp_path / "db").mkdir()
    with BudgetLock(f"sqlite:///{tmp_path}/db/a.db?timeout=5", "s").held():
        pass
    assert [p.name.split(".")[:2] for p in (tmp_path / "db").iterdir()] == [["a", "db"]]


def test_fail_running_marks_a_running_trial_once(tmp_path):
    # The one path that fails a trial a worker left RUNNING (its process died, or an interrupt came while
    # Optuna could not record the end): the reason is kept, and a finished trial is left as it is.
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", directions=["minimize"])
    trial = study.ask()
    storage = study._storage
    assert fail_running(storage, trial._trial_id, "interrupted (SIGINT or SIGTERM)") is True
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["error"] == "interrupted (SIGINT or SIGTERM)"
    assert fail_running(storage, trial._trial_id, "its worker died") is False
    assert storage.get_trial(trial._trial_id).user_attrs["error"] == "interrupted (SIGINT or SIGTERM)"
