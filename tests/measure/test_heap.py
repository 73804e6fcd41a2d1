"""The retained heap: freed memory stays mapped while timing, so a repeated forward stops faulting."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from archsearch.measure._heap import heap_mode, retained_heap
from archsearch.measure.latency import LatencyConfig, measure_latency
from archsearch.references import get_reference

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A fresh interpreter: glibc's thresholds are process state that other tests have already moved.
_SCRIPT = """
import resource, torch
from archsearch.measure._heap import retained_heap

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(4 << 20).fill_(1.0)  # 16 MiB, freed at once, like an activation
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

outside = faults()
with retained_heap():
    faults()  # the first touch maps the pages once
    inside = faults()
print(outside, inside)
"""


@pytest.mark.skipif(not GLIBC, reason="retaining the heap uses glibc's mallopt; elsewhere it is a no-op")
def test_retained_heap_stops_page_faults():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True)
    outside, inside = map(int, out.stdout.split())
    assert outside > 5 * 1000, "16 MiB blocks are mmapped afresh by default: one fault per 4 KiB page"
    assert inside < 100


def test_heap_mode_and_reentry():
    assert heap_mode(False) == "default"
    assert heap_mode(True) == ("retained" if GLIBC else "default")
    with retained_heap(), retained_heap():  # nested blocks, as when the predictor times inside a search
        pass


def test_conditions_and_cache_key_name_the_heap():
    tiny = get_reference("fastvit_t8").spec.scaled(width_mult=0.125, max_depth=1)
    on, off = LatencyConfig(threads=1, warmup=1, repeats=3), LatencyConfig(threads=1, warmup=1, repeats=3, retain_heap=False)
    assert measure_latency(tiny, 64, off).conditions["heap"] == "default"
    assert measure_latency(tiny, 64, on).conditions["heap"] == heap_mode(True)
    assert on.cache_key() != off.cache_key()
