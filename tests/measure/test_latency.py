"""Latency backends, statistics, interleaved comparison, conditions."""
from __future__ import annotations

import pytest
import torch

from archsearch.errors import ConfigError
from archsearch.measure.latency import (LatencyConfig, LatencyStats, compare_latency, latency_sampler, measure_latency,
                                        time_modules_interleaved)
from archsearch.references import get_reference

TINY = get_reference("fastvit_sa12").spec.scaled(width_mult=0.125, max_depth=1)
FAST = LatencyConfig(threads=1, warmup=1, repeats=5)


def test_stats():
    s = LatencyStats.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s.median_ms == 3.0 and s.q1_ms == 2.0 and s.q3_ms == 4.0 and s.iqr_ms == 2.0
    assert s.min_ms == 1.0 and s.max_ms == 5.0 and s.repeats == 5
    assert s.cv == pytest.approx(1.5811388 / 3.0, rel=1e-6)
    assert LatencyStats.from_samples([7.0]).iqr_ms == 0.0


@pytest.mark.parametrize("backend", ["torch-cpu", "onnxruntime"])
def test_measure_latency_carries_conditions(backend):
    lat = measure_latency(TINY, 64, LatencyConfig(backend=backend, threads=1, warmup=1, repeats=4))
    assert lat.latency_ms > 0 and lat.stats.repeats == 4
    c = lat.conditions
    assert c["backend"] == backend and c["threads"] == 1 and c["warmup"] == 1 and c["repeats"] == 4
    assert c["model_form"] == "reparameterized" and c["flush_denormal"] is True
    assert c["resolution"] == [64, 64] and c["device"]["kind"] == "cpu"
    assert torch.get_num_threads() == 2, "the thread count is restored after timing"


def test_channels_last_and_budget():
    lat = measure_latency(TINY, 64, LatencyConfig(threads=1, warmup=0, repeats=1000, channels_last=True, time_budget_s=0.05))
    assert 3 <= lat.stats.repeats < 1000 and lat.conditions["channels_last"] is True


def test_sampler_times_on_demand_under_measure_conditions():
    with latency_sampler(TINY, 64, FAST) as sampler:
        first, second = sampler.sample(2), sampler.sample(3)
        assert torch.get_num_threads() == 1, "the timing environment holds while the sampler is open"
    assert len(first) == 2 and len(second) == 3 and all(t > 0 for t in first + second)
    assert "repeats" not in sampler.conditions
    # A finished measurement adds its count and its spread verdict; the conditions it was taken under are the same.
    expected = {k: v for k, v in measure_latency(TINY, 64, FAST).conditions.items()
                if k not in ("repeats", "noisy", "max_cv", "attempts")}
    assert sampler.conditions == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_cuda_backend_without_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        measure_latency(TINY, 64, LatencyConfig(backend="cuda"))


def test_interleaved_ratio():
    wide = get_reference("fastvit_sa12").spec.scaled(width_mult=0.5, max_depth=2)
    cmp = compare_latency(wide, TINY, 96, FAST)
    assert cmp.ratio.median_ms > 1.0  # a 4x wider, deeper net is slower
    assert cmp.ratio.repeats == 5 and cmp.conditions["interleaved"] is True
    # The same model against itself: the median of 15 interleaved pairs, at a side whose forward is long enough
    # (96 px) that one preemption of a pair on a shared core cannot move the median past 2.
    same = compare_latency(TINY, TINY, 96, LatencyConfig(threads=1, warmup=2, repeats=15))
    assert 0.5 < same.ratio.median_ms < 2.0


class _Sleep(torch.nn.Module):
    """A forward of a known length: what the interleaving does is then exact, whatever the machine."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms

    def forward(self, x):
        import time

        time.sleep(self.ms / 1000)
        return x


def test_interleaved_times_a_short_b_in_bursts_after_a_long_a():
    x = torch.zeros(1)
    cfg = LatencyConfig(threads=1, warmup=1, repeats=3)
    a, b, ratio = time_modules_interleaved((_Sleep(60), x), (_Sleep(2), x), cfg)
    # B is 1/30 of A: bursts of 5 (the cap; a quarter of A would allow 7), one ratio per A.
    assert a.repeats == 3 and b.repeats == 15 and ratio.repeats == 3
    assert 18 < ratio.median_ms < 32
    # Comparable lengths: one B per A, as before.
    a, b, ratio = time_modules_interleaved((_Sleep(6), x), (_Sleep(4), x), cfg)
    assert a.repeats == b.repeats == ratio.repeats == 3
    # A time budget ends the pairs as it ends any timing: after the round that passes it, never before 3.
    budget = LatencyConfig(threads=1, warmup=0, repeats=1000, time_budget_s=0.05)
    a, b, ratio = time_modules_interleaved((_Sleep(30), x), (_Sleep(2), x), budget)
    assert a.repeats == ratio.repeats == 3
    long_budget = LatencyConfig(threads=1, warmup=0, repeats=1000, time_budget_s=0.25)
    a, _, _ = time_modules_interleaved((_Sleep(30), x), (_Sleep(2), x), long_budget)
    assert 4 <= a.repeats <= 8


@pytest.mark.parametrize(
    "kwargs, key",
    [(dict(backend="tpu"), "backend"), (dict(threads=0), "threads"), (dict(repeats=0), "repeats"),
     (dict(backend="onnxruntime", compile=True), "compile")],
)
def test_config_errors(kwargs, key):
    with pytest.raises(ConfigError) as info:
        LatencyConfig(**kwargs)
    assert info.value.key == key


def test_a_noisy_measurement_is_retried_marked_and_never_cached(tmp_path, caplog):
    # A busy process on the same core (busy 3 ms, idle 3 ms) makes every timing noisy.
    import logging
    import os
    import subprocess
    import sys

    from archsearch.measure.cache import MeasureCache
    from archsearch.metrics import Measurer
    from archsearch.options import LatencyConfig, MeasureOptions
    from archsearch.references import get_reference

    core = sorted(os.sched_getaffinity(0))[0]
    saved = os.sched_getaffinity(0)
    busy = subprocess.Popen([sys.executable, "-c", "import os, time\nos.sched_setaffinity(0, {%d})\n"
                             "while True:\n  t = time.perf_counter()\n  while time.perf_counter() - t < 0.003: pass\n"
                             "  time.sleep(0.003)\n" % core])
    try:
        os.sched_setaffinity(0, {core})
        cache = MeasureCache(tmp_path / "m.sqlite")
        cfg = LatencyConfig(threads=1, warmup=1, repeats=15, max_cv=0.02, noisy_retries=1)
        m = Measurer(MeasureOptions(latency=cfg), cache)
        spec = get_reference("fastvit_t8").spec
        with caplog.at_level(logging.WARNING, logger="archsearch"):
            lat = m.latency(spec, 64)
        assert lat.conditions["noisy"] and lat.conditions["attempts"] == 2 and lat.stats.cv > 0.02
        assert len(cache) == 0, "a noisy value is not cached as a good one"
        assert any("still noisy" in r.getMessage() for r in caplog.records)
        steady = Measurer(MeasureOptions(latency=LatencyConfig(threads=1, warmup=1, repeats=5, max_cv=10.0)), cache)
        assert not steady.latency(spec, 64).conditions["noisy"] and len(cache) == 1
    finally:
        busy.kill()
        os.sched_setaffinity(0, saved)
