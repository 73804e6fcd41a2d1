"""One reading of SQLite storage URLs: what reading a study checks and where the budget lock lives."""
from pathlib import Path

import pytest

from archsearch._storage import sqlite_file
from archsearch.search import _BudgetLock


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
    with _BudgetLock("sqlite:///:memory:", "s").held():
        pass
    assert list(tmp_path.iterdir()) == []  # before, a ':memory:.<key>.lock' file appeared in the cwd
    (tmp_path / "db").mkdir()
    with _BudgetLock(f"sqlite:///{tmp_path}/db/a.db?timeout=5", "s").held():
        pass
    assert [p.name.split(".")[:2] for p in (tmp_path / "db").iterdir()] == [["a", "db"]]
