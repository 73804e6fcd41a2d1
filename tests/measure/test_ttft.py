"""TTFT: real Qwen2 prefill shapes, fitted curve, cache."""
from __future__ import annotations

import pytest
import torch

from archsearch.errors import ConfigError
from archsearch.measure import ttft as ttft_mod
from archsearch.measure.cache import MeasureCache
from archsearch.measure.latency import LatencyConfig
from archsearch.measure.ttft import LLM_PRESETS, LLMShape, fit_prefill, get_llm, measure_prefill, measure_ttft
from archsearch.references import get_reference

from ..conftest import TINY_LLM_YAML

TINY_LLM = LLMShape("tiny", layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=1000)


@pytest.mark.parametrize("name", sorted(LLM_PRESETS))
def test_preset_shapes_match_transformers(name):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = LLM_PRESETS[name]
    cfg = Qwen2Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tie_embeddings,
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == shape.params
    assert {"qwen2-0.5b": 494_032_768}.get(name, shape.params) == shape.params


def test_fit_is_cached_and_increasing(tmp_path, monkeypatch):
    cache = MeasureCache(tmp_path / "c.sqlite")
    cfg = LatencyConfig(threads=1, warmup=1, repeats=3)
    model = fit_prefill(TINY_LLM, token_counts=(16, 64, 256, 512), config=cfg, cache=cache)
    assert len(model.points) == 4
    assert model.predict_ms(512) > model.predict_ms(16) > 0
    assert all(c >= 0 for c in model.coeffs)
    # A second fit on this device is a cache lookup: building the decoder would fail here.
    monkeypatch.setattr(ttft_mod, "_build_llm", lambda shape: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert fit_prefill(TINY_LLM, token_counts=(16, 64, 256, 512), config=cfg, cache=cache) == model


def test_ttft_adds_encoder_and_prefill(tmp_path):
    cache = MeasureCache(tmp_path / "c.sqlite")
    spec = get_reference("fastvithd").spec.scaled(width_mult=0.125, max_depth=1)
    cfg = LatencyConfig(threads=1, warmup=1, repeats=3)
    t = measure_ttft(spec, 256, TINY_LLM, prompt_tokens=7, latency_config=cfg, cache=cache)
    assert t.visual_tokens == 16 and t.prompt_tokens == 7
    assert t.ttft_ms == pytest.approx(t.encoder_ms + t.prefill_ms)
    assert t.conditions["prefill"]["extrapolated"] is False
    assert measure_prefill(TINY_LLM, 23, cfg).median_ms > 0


def test_llm_from_yaml_and_errors(tmp_path):
    path = tmp_path / "llm.yaml"
    path.write_text(TINY_LLM_YAML)
    assert get_llm(str(path)).hidden == 64
    path.write_text(TINY_LLM_YAML + "experts: 8\n")
    with pytest.raises(ConfigError, match=r"^llm\.experts: unknown key"):
        get_llm(str(path))
    with pytest.raises(ConfigError, match="neither a preset"):
        get_llm("gpt-5")
    with pytest.raises(ConfigError, match="^kv_heads: heads 4 is not divisible"):
        LLMShape("x", layers=1, hidden=64, heads=4, kv_heads=3, intermediate=8, vocab=8)
    huge = LLMShape("huge", layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=28672, vocab=128256)
    with pytest.raises(ConfigError, match="GiB of memory is available"):
        ttft_mod._build_llm(huge)
