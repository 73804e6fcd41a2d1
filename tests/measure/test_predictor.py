"""Lookup-table latency predictor."""
from __future__ import annotations

import statistics

import pytest

from archsearch.errors import ConfigError
from archsearch.measure.latency import LatencyConfig, measure_latency
from archsearch.measure.predictor import LatencyPredictor, components
from archsearch.references import get_reference
from archsearch.space import draw, load_space
from archsearch.spec import ArchSpec, StageSpec

from ..conftest import SPACES

CFG = LatencyConfig(threads=1, warmup=2, repeats=7)


def test_components_of_a_spec():
    spec = get_reference("fastvit_sa12").spec
    comps = components(spec, 256)
    blocks = [c for c in comps if c.key.startswith("block:")]
    assert sum(c.count for c in blocks) == sum(spec.depths)
    assert [c.key.split(":")[0] for c in comps].count("embed") == 3  # stage 0 has no patch embedding
    assert any(c.key.startswith("cpe:w512:k7:8x8") for c in comps)
    assert comps[-1].key == "final:512>1024:8x8"
    # Same width, no downsampling: no patch embedding at all.
    flat = ArchSpec(stages=(StageSpec(1, 16, downsample=False), StageSpec(2, 16, downsample=False)))
    assert not any(c.key.startswith("embed") for c in components(flat, 64))


def test_components_build_their_modules():
    spec = get_reference("fastvithd").spec.scaled(width_mult=0.125, max_depth=1)
    for comp in components(spec, 64):
        module, x = comp.make()
        module.eval()(x)


def test_predictor_within_a_loose_bound(tmp_path):
    predictor = LatencyPredictor(CFG, path=tmp_path / "lut.json", statistic="median")
    fastvit = [p for p in SPACES if p.stem == "fastvit"][0]
    candidates, _ = draw(load_space(fastvit, ["resolution=[96]"]), 8, seed=2)
    tiny = [(c.spec.scaled(width_mult=0.25, max_depth=2), 96) for c in candidates]
    # Loose on purpose: a shared 2-core CI machine (and the suite's other worker) whose speed drifts between
    # the fit and the checks (an absolute table moves with it; benchmarks/ has the real accuracy figures with
    # interleaved timing). The predictor must get the specs' relative latencies right and the scale roughly;
    # a busy spell gets one more try, fitted and measured afresh.
    for _attempt in range(2):
        predictor.fit_scale(tiny[:3])
        ratios = [predictor.predict(spec, res) / measure_latency(spec, res, CFG).latency_ms for spec, res in tiny[3:]]
        mid = statistics.median(ratios)
        spread = statistics.median(abs(r / mid - 1) for r in ratios)
        if 0.4 < mid < 2.5 and spread < 0.3:
            break
    assert 0.4 < mid < 2.5 and spread < 0.3, ratios
    reloaded = LatencyPredictor(CFG, path=tmp_path / "lut.json", statistic="median")
    assert reloaded.entries == predictor.entries and reloaded.scale == predictor.scale


def test_relative_table_is_in_probe_units(tmp_path):
    """A relative table stores ratios to the probe; ms come from the probe's calibration median or a rebase."""
    predictor = LatencyPredictor(CFG, path=tmp_path / "lut.json", statistic="relative", component_repeats=3)
    spec = get_reference("fastvit_t8").spec.scaled(width_mult=0.25, max_depth=1)
    rel = predictor.predict_relative(spec, 64)
    assert all("relative" in e and e["relative"] > 0 for e in predictor.entries.values())
    assert predictor.probe_samples_ms and predictor.probe_ms == statistics.median(predictor.probe_samples_ms)
    assert predictor.predict(spec, 64) == pytest.approx(rel * predictor.probe_ms)
    # The probe is the whole FastViT-T8 at 256 px, the scaled copy at 64 px is far cheaper.
    assert rel < 1.0
    rebased = predictor.rebase()
    assert predictor.probe_ms == rebased and predictor.predict(spec, 64) == pytest.approx(rel * rebased)
    # Whole-model ratio to the probe, timed interleaved.
    ms, ratio = predictor.measure_relative(spec, 64)
    assert ms > 0 and 0 < ratio < 1.0
    predictor.save()
    assert LatencyPredictor(CFG, path=tmp_path / "lut.json").probe_samples_ms == predictor.probe_samples_ms


def test_power_fit_recovers_exponent():
    from archsearch.measure.predictor import _fit_power

    rows = [{"sum_ms": x, "measured_ms": 0.5 * x**1.1} for x in (10, 20, 40, 80, 160)]
    scale, exponent = _fit_power(rows)
    assert exponent == pytest.approx(1.1) and scale == pytest.approx(0.5)
    # One whole model timed at half its summed blocks does not bend the fit (least squares gave 1.05 here).
    outlier = rows + [{"sum_ms": 60, "measured_ms": 0.25 * 60**1.1}]
    scale, exponent = _fit_power(outlier)
    assert exponent == pytest.approx(1.1, abs=0.02) and scale == pytest.approx(0.5, rel=0.05)
    # Too narrow a span: exponent 1, scale the median ratio.
    assert _fit_power(rows[:2]) == (pytest.approx(statistics.median([0.5 * 10**0.1, 0.5 * 20**0.1])), 1.0)


def test_fitted_curve_is_not_extrapolated_beyond_the_fitted_sums(tmp_path):
    predictor = LatencyPredictor(CFG, path=tmp_path / "lut.json")
    predictor.scale, predictor.exponent, predictor.sum_range = 0.5, 1.1, (10.0, 160.0)
    assert predictor._apply(40.0) == pytest.approx(0.5 * 40**1.1)  # inside: the fitted curve
    # Beyond the largest fitted sum: proportional to the sum from that end (continuous there).
    assert predictor._apply(160.0) == pytest.approx(0.5 * 160**1.1)
    assert predictor._apply(800.0) == pytest.approx(0.5 * 160**1.1 * 5)
    assert predictor._apply(5.0) == pytest.approx(0.5 * 10**1.1 / 2)
    # The range travels with the identity a study stores and freezes.
    other = LatencyPredictor(CFG, path=tmp_path / "other.json")
    other.freeze({**predictor.identity(), "probe_ms": 30.0})
    assert other.sum_range == (10.0, 160.0) and other._apply(800.0) == pytest.approx(predictor._apply(800.0))
    # A study stored before the range existed: the plain curve, as then.
    other.freeze({"scale": 0.5, "exponent": 1.1, "probe_ms": 30.0})
    assert other.sum_range is None and other._apply(800.0) == pytest.approx(0.5 * 800**1.1)


def test_unknown_statistic_is_refused():
    with pytest.raises(ConfigError, match="statistic"):
        LatencyPredictor(CFG, statistic="mean")
