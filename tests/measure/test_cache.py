from __future__ import annotations

import subprocess
import sys

from archsearch.measure import MeasureCache
from archsearch.metrics import Measurer
from archsearch.options import MeasureOptions
from archsearch.references import get_reference


def test_put_get_and_disabled(tmp_path):
    cache = MeasureCache(tmp_path / "c.sqlite")
    key = MeasureCache.key(metric="x", spec="abc", resolution=[64, 64])
    assert key == MeasureCache.key(resolution=[64, 64], spec="abc", metric="x")
    assert cache.get(key) is None
    cache.put(key, {"v": 1.5})
    assert cache.get(key) == {"v": 1.5} and len(cache) == 1
    off = MeasureCache(tmp_path / "c.sqlite", enabled=False)
    assert off.get(key) is None


def test_repeated_measurement_is_a_lookup(tmp_path, monkeypatch):
    from archsearch.measure import flops

    cache = MeasureCache(tmp_path / "c.sqlite")
    m = Measurer(MeasureOptions(), cache)
    spec = get_reference("fastvit_t8").spec
    first = m.measure(spec, 64, ["params", "macs", "tokens"])
    monkeypatch.setattr(flops, "count_complexity", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recounted")))
    assert Measurer(MeasureOptions(), cache).measure(spec, 64, ["params", "macs", "tokens"]) == first


def test_shared_by_processes(tmp_path):
    path = tmp_path / "c.sqlite"
    code = (
        "import sys; from archsearch.measure.cache import MeasureCache as C; c = C(sys.argv[1]);"
        "[c.put(C.key(i=i, p=sys.argv[2]), {'i': i}) for i in range(50)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(n)]) for n in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(MeasureCache(path)) == 100


def test_a_locked_database_is_waited_for_not_dropped(tmp_path, monkeypatch):
    """SQLite answers "database is locked" at once in some cases (two processes switching a new file to
    WAL): the cache waits and retries instead of dropping itself for the rest of the process."""
    import sqlite3

    cache = MeasureCache(tmp_path / "c.sqlite")
    cache.put("k", {"v": 1})
    real = sqlite3.Connection
    calls = {"n": 0}

    def flaky(db):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise sqlite3.OperationalError("database is locked")
        return db.execute("SELECT value FROM measurements WHERE key = 'k'").fetchone()

    assert cache._recovering(flaky)[0] == '{"v": 1}' and calls["n"] == 4
    assert cache.enabled and isinstance(cache._db(), real)
    monkeypatch.setattr("archsearch.measure.cache.LOCK_WAIT_S", 0.0)
    # Locked for good: the wait ends, the cache is dropped with one warning, and the work goes on uncached.
    monkeypatch.setattr(cache, "_db", lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")))
    assert cache.get("k") is None and not cache.enabled
