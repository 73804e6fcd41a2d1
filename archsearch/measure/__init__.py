"""Measured objectives of a (spec, resolution): params, MACs, tokens, latency, predicted latency, TTFT.

:class:`Measurer` is the one entry point the CLI and the search use: it runs each metric family once,
caches every result on disk keyed by (spec hash, resolution, device fingerprint, metric, backend and
options), and returns plain numbers together with the conditions they were measured under.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import ConfigError
from ..spec import ArchSpec, Resolution, parse_resolution
from .cache import MeasureCache
from .device import device_fingerprint
from .flops import COUNTERS, Complexity, count_complexity
from .latency import LATENCY_BACKENDS, Latency, LatencyConfig, compare_latency, latency_sampler, measure_latency
from .ttft import LLM_PRESETS, LLMShape, PrefillModel, TTFT, fit_prefill, get_llm, measure_ttft

__all__ = [
    "COUNTERS",
    "LATENCY_BACKENDS",
    "LLM_PRESETS",
    "METRICS",
    "Complexity",
    "Latency",
    "LatencyConfig",
    "LLMShape",
    "MeasureCache",
    "MeasureOptions",
    "Measurer",
    "compare_latency",
    "count_complexity",
    "fit_prefill",
    "get_llm",
    "latency_sampler",
    "measure_latency",
    "measure_ttft",
    "parse_metrics",
]


@dataclass(frozen=True)
class MeasureOptions:
    counter: str = "fast"
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    llm: str = "qwen2-0.5b"
    prompt_tokens: int = 32

    def __post_init__(self) -> None:
        if self.counter not in COUNTERS:
            raise ConfigError("counter", f"{self.counter!r} is not one of: {', '.join(COUNTERS)}")
        if self.prompt_tokens < 0:
            raise ConfigError("prompt_tokens", f"must be >= 0, got {self.prompt_tokens}")


def _latency_fields(lat: Latency) -> dict:
    s = lat.stats
    return {
        "median_ms": s.median_ms, "q1_ms": s.q1_ms, "q3_ms": s.q3_ms, "iqr_ms": s.iqr_ms, "cv": s.cv,
        "min_ms": s.min_ms, "max_ms": s.max_ms, "p10_ms": s.p10_ms, **lat.conditions,
    }


class Measurer:
    """Measures and caches; one per process is enough (it holds the predictor and the prefill fit)."""

    def __init__(self, options: Optional[MeasureOptions] = None, cache: Optional[MeasureCache] = None) -> None:
        self.options = options or MeasureOptions()
        self.cache = cache if cache is not None else MeasureCache()
        self._predictor = None
        self._prefill: Optional[PrefillModel] = None
        self._llm: Optional[LLMShape] = None

    # --- metric families --------------------------------------------------------------------
    def complexity(self, spec: ArchSpec, resolution: Resolution) -> Complexity:
        hw = parse_resolution(resolution)
        key = MeasureCache.key(metric="complexity", spec=spec.spec_hash, resolution=hw, counter=self.options.counter)
        hit = self.cache.get(key)
        if hit is not None:
            return Complexity(**hit)
        result = count_complexity(spec, hw, counter=self.options.counter)
        self.cache.put(key, result.to_dict())
        return result

    def latency(self, spec: ArchSpec, resolution: Resolution) -> Latency:
        hw = parse_resolution(resolution)
        cfg = self.options.latency
        device = "cuda" if cfg.backend == "cuda" else "cpu"
        key = MeasureCache.key(
            metric="latency", spec=spec.spec_hash, resolution=hw, device=device_fingerprint(device), **cfg.cache_key()
        )
        hit = self.cache.get(key)
        if hit is not None:
            return Latency.from_dict(hit)
        result = measure_latency(spec, hw, cfg)
        self.cache.put(key, result.to_dict())
        return result

    @property
    def predictor(self):
        if self._predictor is None:
            from .predictor import LatencyPredictor

            self._predictor = LatencyPredictor(self.options.latency)
        return self._predictor

    def predicted_latency_ms(self, spec: ArchSpec, resolution: Resolution) -> float:
        return self.predictor.predict(spec, resolution, measure_missing=True)

    @property
    def llm(self) -> LLMShape:
        if self._llm is None:
            self._llm = get_llm(self.options.llm)
        return self._llm

    def prefill_model(self) -> PrefillModel:
        if self._prefill is None:
            cfg = dataclasses.replace(self.options.latency, warmup=1, repeats=3, time_budget_s=None)
            self._prefill = fit_prefill(self.llm, config=cfg, cache=self.cache)
        return self._prefill

    def ttft(self, spec: ArchSpec, resolution: Resolution) -> TTFT:
        return measure_ttft(
            spec,
            resolution,
            self.llm,
            prompt_tokens=self.options.prompt_tokens,
            encoder=self.latency(spec, resolution),
            prefill=self.prefill_model(),
        )

    # --- rows ---------------------------------------------------------------------------------
    def measure(self, spec: ArchSpec, resolution: Resolution, metrics: Sequence[str]) -> dict:
        """One flat row: identity, the requested metrics, and each metric's conditions."""
        hw = parse_resolution(resolution)
        row: dict = {
            "spec": spec.name or spec.spec_hash,
            "spec_hash": spec.spec_hash,
            "arch": spec.code,
            "resolution": hw[0] if hw[0] == hw[1] else list(hw),
        }
        for name in metrics:
            row.update(METRICS[name](self, spec, hw))
        return row


def _params(m: Measurer, spec: ArchSpec, hw) -> dict:
    c = m.complexity(spec, hw)
    return {"params": c.params, "params_deploy": c.params_deploy}


def _macs(m: Measurer, spec: ArchSpec, hw) -> dict:
    c = m.complexity(spec, hw)
    return {
        "macs": c.macs,
        "gmacs": round(c.gmacs, 4),
        "macs_by_op": c.macs_by_op,
        "bias_adds": c.bias_adds,
        "activations": c.activations,
        "macs_conditions": c.conditions,
    }


def _tokens(m: Measurer, spec: ArchSpec, hw) -> dict:
    return {"tokens": spec.visual_tokens(hw), "grid": list(spec.grid(hw)), "stride": spec.output_stride}


def _latency(m: Measurer, spec: ArchSpec, hw) -> dict:
    lat = m.latency(spec, hw)
    return {"latency_ms": lat.latency_ms, "latency": _latency_fields(lat)}


def _predicted(m: Measurer, spec: ArchSpec, hw) -> dict:
    p = m.predictor
    return {
        "predicted_latency_ms": m.predicted_latency_ms(spec, hw),
        "predicted_latency": {"table": str(p.path), "statistic": p.statistic, "scale": p.scale, "exponent": p.exponent,
                              "probe_ms": p.probe_ms, "backend": p.config.backend, "threads": p.config.threads},
    }


def _ttft(m: Measurer, spec: ArchSpec, hw) -> dict:
    t = m.ttft(spec, hw)
    enc = m.latency(spec, hw)
    return {
        "ttft_ms": t.ttft_ms,
        "ttft": {
            "encoder_ms": t.encoder_ms,
            "prefill_ms": t.prefill_ms,
            "visual_tokens": t.visual_tokens,
            "prompt_tokens": t.prompt_tokens,
            "llm": t.conditions["llm"],
            "encoder": _latency_fields(enc),
            "prefill": t.conditions["prefill"],
        },
    }


#: Metrics by name, as ``--metrics`` and the search's objectives name them.
METRICS: Dict[str, Callable[[Measurer, ArchSpec, tuple], dict]] = {
    "params": _params,
    "macs": _macs,
    "tokens": _tokens,
    "latency": _latency,
    "predicted_latency": _predicted,
    "ttft": _ttft,
}


def parse_metrics(text: str | Sequence[str]) -> List[str]:
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    if not names:
        raise ConfigError("metrics", "no metric given")
    for n in names:
        if n not in METRICS:
            raise ConfigError("metrics", f"{n!r} is not one of: {', '.join(METRICS)}")
    return names
