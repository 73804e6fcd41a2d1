"""Zero-cost proxies on known cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from archsearch.errors import ConfigError
from archsearch.proxy import PROXIES, ProxyConfig, score_proxy
from archsearch.proxy.zero_cost import naswot, synflow
from archsearch.references import get_reference

CFG = ProxyConfig(width_mult=0.25, max_depth=1, resolution=32, batch_size=8, data="noise")


def _mlp(dead: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16, bias=False), nn.ReLU(), nn.Linear(16, 16, bias=False), nn.ReLU(),
                        nn.Linear(16, 4, bias=False))
    if dead:
        with torch.no_grad():
            net[3].weight.zero_()  # every input-output path crosses this layer
    return net


def test_synflow_is_zero_with_a_dead_layer():
    x, y = torch.randn(4, 3, 2, 2), torch.zeros(4, dtype=torch.long)
    assert synflow(_mlp(), x, y) > 0
    assert synflow(_mlp(dead=True), x, y) == 0.0


def test_synflow_restores_weights():
    net = _mlp()
    before = [p.detach().clone() for p in net.parameters()]
    synflow(net, torch.randn(2, 3, 2, 2), torch.zeros(2, dtype=torch.long))
    assert all(torch.equal(a.double(), b) for a, b in zip(before, net.parameters()))


def test_naswot_needs_distinguishable_inputs():
    net = _mlp()
    same = torch.randn(1, 3, 2, 2).repeat(6, 1, 1, 1)
    assert naswot(net, same, torch.zeros(6, dtype=torch.long)) == -math.inf  # rank-one kernel
    assert math.isfinite(naswot(net, torch.randn(6, 3, 2, 2), torch.zeros(6, dtype=torch.long)))


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_deterministic_for_a_seed(name):
    spec = get_reference("fastvit_sa12").spec
    a, b = score_proxy(spec, name, CFG), score_proxy(spec, name, CFG)
    assert a.score == b.score and math.isfinite(a.score)
    assert a.config["width_mult"] == 0.25 and a.scored_spec_hash != spec.spec_hash  # the scaling rule is logged
    other = score_proxy(spec, name, ProxyConfig(width_mult=0.25, max_depth=1, resolution=32, batch_size=8, seed=1, data="noise"))
    assert other.score != a.score


def test_wider_net_does_not_get_lower_synflow():
    spec = get_reference("fastvithd").spec
    narrow = score_proxy(spec, "synflow", ProxyConfig(width_mult=0.125, max_depth=1, resolution=32, data="noise"))
    wide = score_proxy(spec, "synflow", ProxyConfig(width_mult=0.25, max_depth=1, resolution=32, data="noise"))
    assert wide.score >= narrow.score


def test_unknown_proxy():
    with pytest.raises(ConfigError, match="^proxy: 'iq' is not one of"):
        score_proxy(get_reference("fastvit_t8").spec, "iq")
