from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # Measurements and latency tables go to a throw-away directory, never the user's cache.
    os.environ["ARCHSEARCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("archsearch-cache"))
    yield


@pytest.fixture(autouse=True, scope="session")
def _deterministic_torch():
    # Random-init FastViT nets produce denormals; flushing keeps CPU time stable and tests fast.
    torch.set_flush_denormal(True)
    torch.set_num_threads(2)
    yield


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm statistics, affine params and layer scales non-trivial values.

    At initialisation BN is an identity and layer scales are 1e-5, so folding them would be checked
    only on near-identity branches; random values make the reparameterisation test mean something.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("layer_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


TINY_LLM_YAML = """
name: tiny-llm
layers: 2
hidden: 64
heads: 4
kv_heads: 2
intermediate: 128
vocab: 1000
"""
