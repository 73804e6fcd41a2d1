"""The counters: what each counts, and their exact agreement on the ops they share."""
from __future__ import annotations

import time

import pytest
import torch

from archsearch.build import build_model
from archsearch.measure.flops import _OpCounter, count_complexity
from archsearch.references import get_reference
from archsearch.space import draw, load_space
from archsearch.spec import ArchSpec, StageSpec

from ..conftest import SPACES


def _specs():
    yield get_reference("fastvit_sa12").spec.scaled(width_mult=0.25, max_depth=2)
    yield get_reference("fastvithd").spec.scaled(width_mult=0.25, max_depth=2)
    yield get_reference("fastvit_mci0").spec.scaled(width_mult=0.25, max_depth=2)
    for path in SPACES:
        for c in draw(load_space(path), 2, seed=5)[0]:
            yield c.spec.scaled(width_mult=1 / 8, max_depth=1)


@pytest.mark.parametrize("spec", list(_specs()), ids=lambda s: s.code)
def test_counters_agree_on_shared_ops(spec):
    fast = count_complexity(spec, 128, counter="fast")
    fv = count_complexity(spec, 128, counter="fvcore")
    pt = count_complexity(spec, 128, counter="ptflops")
    # conv and linear weights: every counter counts them the same way (here they agree exactly).
    assert fast.macs_by_op["conv"] == pytest.approx(fv.macs_by_op["conv"], rel=0.01)
    assert fast.macs_by_op["linear"] == pytest.approx(fv.macs_by_op["linear"], rel=0.01)
    # ptflops' single total is conv + linear weights + bias adds, without the fused CPU attention.
    assert fast.shared_macs + fast.bias_adds == pytest.approx(pt.macs, rel=0.01)
    # fvcore skips SDPA; its total is shared ops plus the norms it counts.
    assert fv.macs == fast.shared_macs + sum(fv.conditions.get("other_ops", {}).values())
    assert fast.params == fv.params and fast.params_deploy < fast.params


def test_attention_macs_match_the_formula():
    # One attention block on an N-token grid: QK^T and AV are N*N*C MACs each.
    spec = ArchSpec(stages=(StageSpec(1, 16, downsample=False), StageSpec(1, 32, token_mixer="attention")), head_dim=8)
    c = count_complexity(spec, 64)
    n = 8 * 8  # 64 px -> stem 16 -> stage 1 downsample 8
    assert c.macs_by_op["attention"] == 2 * n * n * 32


def test_fast_counter_same_on_meta_and_cpu_tensors():
    # On CPU tensors SDPA runs fused (_scaled_dot_product_flash_attention_for_cpu); it must be priced too.
    spec = get_reference("fastvithd").spec.scaled(width_mult=0.125, max_depth=1)
    meta = count_complexity(spec, 128)
    model = build_model(spec, inference_mode=True).eval()
    counter = _OpCounter()
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, 128, 128))
    assert counter.macs == meta.macs_by_op


def test_conv_macs_scale_with_pixels():
    # Without final_conv: its squeeze-excite works on a pooled 1x1 map, which does not scale.
    spec = get_reference("fastvit_t8").spec.replace(final_conv=False)
    small, big = count_complexity(spec, 256), count_complexity(spec, 512)
    assert big.macs_by_op["conv"] == 4 * small.macs_by_op["conv"]


def test_fastvithd_1024_is_fast():
    spec = get_reference("fastvithd").spec
    count_complexity(spec, 128)  # warm: the first count pays torch's dispatch set-up
    start = time.perf_counter()
    count_complexity(spec, 256)
    small = time.perf_counter() - start
    start = time.perf_counter()
    c = count_complexity(spec, 1024)
    # The meta device does no arithmetic: 16x the pixels cost about the same (fvcore took 36 s, ptflops 59 s here).
    assert time.perf_counter() - start < 4 * small + 0.5
    assert c.params == 122_875_584
    assert c.macs_by_op["attention"] > 0 and c.gmacs > 200


def test_unknown_counter():
    from archsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="^counter: 'flopz' is not one of"):
        count_complexity(get_reference("fastvit_t8").spec, 64, counter="flopz")
