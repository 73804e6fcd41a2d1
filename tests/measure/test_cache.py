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
