"""Time to first token: vision-encoder latency + LLM prefill over (visual tokens + prompt tokens).

The prefill is measured, not estimated: ``transformers``' Qwen2 (the reference implementation of these
shapes) is built from a config with random weights (nothing is downloaded) and asked for the last
position's logits only (``logits_to_keep=1``), as a VLM does before its first token. Prefill time is
measured at a few token counts and fitted with ``a + b*T + c*T**2`` (non-negative; attention makes it
quadratic); the fit is cached per (LLM shape, device, threads), so a search never re-runs the LLM.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .._config import from_data, read_yaml
from ..errors import ConfigError
from ..spec import ArchSpec, Resolution, parse_resolution
from ._heap import heap_mode
from .cache import MeasureCache
from .device import device_fingerprint, device_info
from .latency import Latency, LatencyConfig, LatencyStats, measure_latency, time_module

__all__ = ["LLMShape", "LLM_PRESETS", "PrefillModel", "TTFT", "fit_prefill", "get_llm", "measure_prefill", "measure_ttft"]


@dataclass(frozen=True)
class LLMShape:
    """A decoder's shape (Qwen2 architecture); presets below, or a YAML file with these keys."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False
    rope_theta: float = 1_000_000.0

    def __post_init__(self) -> None:
        for key in ("layers", "hidden", "heads", "kv_heads", "intermediate", "vocab"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.hidden % self.heads:
            raise ConfigError("hidden", f"{self.hidden} is not divisible by heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ConfigError("kv_heads", f"heads {self.heads} is not divisible by kv_heads {self.kv_heads}")

    @property
    def params(self) -> int:
        head = self.hidden // self.heads
        attn = self.hidden * (self.heads + 2 * self.kv_heads) * head + (self.heads + 2 * self.kv_heads) * head
        attn += self.heads * head * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        emb = self.vocab * self.hidden * (1 if self.tie_embeddings else 2)
        return self.layers * (attn + mlp + 2 * self.hidden) + emb + self.hidden

    @property
    def shape_hash(self) -> str:
        d = asdict(self)
        d.pop("name")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


LLM_PRESETS: Dict[str, LLMShape] = {
    s.name: s
    for s in [
        LLMShape("qwen2-0.5b", layers=24, hidden=896, heads=14, kv_heads=2, intermediate=4864, vocab=151936, tie_embeddings=True),
        LLMShape("qwen2-1.5b", layers=28, hidden=1536, heads=12, kv_heads=2, intermediate=8960, vocab=151936,
                 tie_embeddings=True),
        LLMShape("qwen2-7b", layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064),
    ]
}


def get_llm(name_or_path: str) -> LLMShape:
    if name_or_path in LLM_PRESETS:
        return LLM_PRESETS[name_or_path]
    if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file():
        data = read_yaml(name_or_path)
        if isinstance(data, dict):
            data.setdefault("name", Path(name_or_path).stem)
        try:
            return from_data(LLMShape, data)
        except ConfigError as e:
            raise ConfigError(f"llm.{e.key}" if e.key else "llm", f"{e.message} (in {name_or_path})") from None
    raise ConfigError("llm", f"{name_or_path!r} is neither a preset ({', '.join(LLM_PRESETS)}) nor an LLM shape YAML file")


def _available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _build_llm(shape: LLMShape) -> torch.nn.Module:
    need = shape.params * 4
    available = _available_bytes()
    if available is not None and need > 0.8 * available:
        raise ConfigError(
            "llm", f"{shape.name} needs about {need / 2**30:.1f} GiB in float32, "
            f"only {available / 2**30:.1f} GiB of memory is available here"
        )
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=32768,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tie_embeddings,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


class _LastLogits(torch.nn.Module):
    """A decoder's prefill as a module of the token ids: logits of the last position only, no KV cache."""

    def __init__(self, llm: torch.nn.Module) -> None:
        super().__init__()
        self.llm = llm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm(input_ids=ids, logits_to_keep=1, use_cache=False).logits


def _prefill_config(cfg: LatencyConfig) -> LatencyConfig:
    """The encoder's timing settings as they apply to a decoder: its device (cuda or the CPU) and threads."""
    return dataclasses.replace(cfg, backend="cuda" if cfg.device == "cuda" else "torch-cpu", channels_last=False,
                               compile=False, batch=1)


class _Prefill:
    """One built decoder, timed at any number of tokens with the encoder's timing loop."""

    def __init__(self, shape: LLMShape) -> None:
        self.shape = shape
        self.model = _LastLogits(_build_llm(shape))

    def time(self, tokens: int, cfg: LatencyConfig) -> LatencyStats:
        ids = torch.randint(0, self.shape.vocab, (1, tokens), generator=torch.Generator().manual_seed(tokens))
        return time_module(self.model, ids, _prefill_config(cfg))


def _prefill_conditions(shape: LLMShape, cfg: LatencyConfig) -> dict:
    return {
        "llm": asdict(shape),
        "implementation": "transformers Qwen2ForCausalLM, random weights, logits_to_keep=1, use_cache=False",
        "device": device_info(cfg.device),
        "device_fingerprint": device_fingerprint(cfg.device),
        "threads": cfg.threads,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "dtype": "float32",
        "heap": heap_mode(cfg.retain_heap),
    }


def measure_prefill(shape: LLMShape, tokens: int, config: Optional[LatencyConfig] = None) -> LatencyStats:
    """Median prefill latency at exactly ``tokens`` tokens (builds the decoder: seconds for 0.5B)."""
    cfg = config or LatencyConfig(warmup=1, repeats=3)
    return _Prefill(shape).time(tokens, cfg)


@dataclass(frozen=True)
class PrefillModel:
    """``ms(T) = a + b*T + c*T^2`` fitted to measured prefill medians."""

    coeffs: tuple
    points: List[dict]
    conditions: Dict[str, object] = field(default_factory=dict)

    def predict_ms(self, tokens: int) -> float:
        a, b, c = self.coeffs
        return a + b * tokens + c * tokens * tokens

    @property
    def max_fitted_tokens(self) -> int:
        return max(p["tokens"] for p in self.points)

    def to_dict(self) -> dict:
        return {"coeffs": list(self.coeffs), "points": self.points, "conditions": self.conditions}

    @classmethod
    def from_dict(cls, d: dict) -> "PrefillModel":
        return cls(tuple(d["coeffs"]), d["points"], d["conditions"])


DEFAULT_FIT_TOKENS = (64, 256, 512, 1024, 2048)


def fit_prefill(
    shape: LLMShape,
    *,
    token_counts: Sequence[int] = DEFAULT_FIT_TOKENS,
    config: Optional[LatencyConfig] = None,
    cache: Optional[MeasureCache] = None,
    progress: Optional[Callable[[str], None]] = None,
) -> PrefillModel:
    cfg = config or LatencyConfig(warmup=1, repeats=3)
    cache = cache if cache is not None else MeasureCache()
    key = MeasureCache.key(
        metric="prefill_fit", llm=shape.shape_hash, device=device_fingerprint(cfg.device), threads=cfg.threads,
        warmup=cfg.warmup, repeats=cfg.repeats, tokens=sorted(token_counts), heap=heap_mode(cfg.retain_heap),
    )
    hit = cache.get(key)
    if hit is not None:
        return PrefillModel.from_dict(hit)
    if len(token_counts) < 3:
        raise ConfigError("token_counts", "need at least 3 token counts to fit a quadratic")
    bench = _Prefill(shape)
    points = []
    for t in sorted(token_counts):
        stats = bench.time(t, cfg)
        points.append({"tokens": t, "median_ms": stats.median_ms, "iqr_ms": stats.iqr_ms, "cv": stats.cv})
        if progress:
            progress(f"{shape.name} prefill {t} tokens: {stats.median_ms:.0f} ms")
    from scipy.optimize import nnls

    ts = np.array([p["tokens"] for p in points], dtype=float)
    ys = np.array([p["median_ms"] for p in points])
    # Weight by 1/y so that the fit is good in relative terms at small and large T alike.
    design = np.stack([np.ones_like(ts), ts, ts**2], axis=1) / ys[:, None]
    coeffs, _ = nnls(design, np.ones_like(ys))
    pred = np.stack([np.ones_like(ts), ts, ts**2], axis=1) @ coeffs
    conditions = _prefill_conditions(shape, cfg)
    conditions["max_rel_fit_error"] = float(np.max(np.abs(pred - ys) / ys))
    model = PrefillModel(tuple(float(c) for c in coeffs), points, conditions)
    cache.put(key, model.to_dict())
    return model


@dataclass(frozen=True)
class TTFT:
    ttft_ms: float
    encoder_ms: float
    prefill_ms: float
    visual_tokens: int
    prompt_tokens: int
    conditions: Dict[str, object]

    def to_dict(self) -> dict:
        return asdict(self)


def measure_ttft(
    spec: ArchSpec,
    resolution: Resolution,
    llm: LLMShape,
    *,
    prompt_tokens: int = 32,
    latency_config: Optional[LatencyConfig] = None,
    encoder: Optional[Latency] = None,
    prefill: Optional[PrefillModel] = None,
    cache: Optional[MeasureCache] = None,
) -> TTFT:
    """Encoder latency (measured, or given) + prefill of visual + prompt tokens (from the fitted model)."""
    if prompt_tokens < 0:
        raise ConfigError("prompt_tokens", f"must be >= 0, got {prompt_tokens}")
    hw = parse_resolution(resolution)
    encoder = encoder or measure_latency(spec, hw, latency_config)
    prefill = prefill or fit_prefill(llm, cache=cache, config=dataclasses.replace(
        latency_config or LatencyConfig(), warmup=1, repeats=3, time_budget_s=None))
    visual = spec.visual_tokens(hw)
    tokens = visual + prompt_tokens
    prefill_ms = prefill.predict_ms(tokens)
    conditions = {
        "encoder": encoder.conditions,
        "encoder_iqr_ms": encoder.stats.iqr_ms,
        "prefill": {**prefill.conditions, "source": "fit", "fit_points": prefill.points, "coeffs": list(prefill.coeffs),
                    "extrapolated": tokens > prefill.max_fitted_tokens},
        "llm": llm.name,
    }
    return TTFT(encoder.latency_ms + prefill_ms, encoder.latency_ms, prefill_ms, visual, prompt_tokens, conditions)
