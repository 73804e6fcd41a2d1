"""Lookup-table latency predictor."""
from __future__ import annotations

import statistics

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
    predictor = LatencyPredictor(CFG, path=tmp_path / "lut.json")
    fastvit = [p for p in SPACES if p.stem == "fastvit"][0]
    candidates, _ = draw(load_space(fastvit, ["resolution=[96]"]), 8, seed=2)
    tiny = [(c.spec.scaled(width_mult=0.25, max_depth=2), 96) for c in candidates]
    predictor.fit_scale(tiny[:3])
    errors = []
    for spec, res in tiny[3:]:
        measured = measure_latency(spec, res, CFG).latency_ms
        errors.append(abs(predictor.predict(spec, res) - measured) / measured)
    # Loose on purpose: a shared 2-core CI machine; benchmarks/ has the real accuracy figures.
    assert statistics.median(errors) < 0.5, errors
    reloaded = LatencyPredictor(CFG, path=tmp_path / "lut.json")
    assert reloaded.entries == predictor.entries and reloaded.scale == predictor.scale
