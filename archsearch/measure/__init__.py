"""Hardware-side measurements of a (spec, resolution): MACs and params (``flops``), latency on a backend
(``latency``), predicted latency from a per-device block table (``predictor``), TTFT with a real LLM
prefill (``ttft``), and the on-disk cache they share (``cache``).

The metric registry and the :class:`~archsearch.metrics.Measurer` that runs and caches every metric by
name (these and the accuracy proxies alike) live one layer up, in :mod:`archsearch.metrics`.
"""
from __future__ import annotations

_LAZY = {
    "LatencyConfig": "..options", "MeasureCache": ".cache", "device_fingerprint": ".device", "COUNTERS": ".flops",
    "Complexity": ".flops", "count_complexity": ".flops", "LATENCY_BACKENDS": ".latency", "Latency": ".latency",
    "compare_latency": ".latency", "latency_sampler": ".latency", "measure_latency": ".latency", "LLM_PRESETS": ".ttft",
    "LLMShape": ".ttft", "PrefillModel": ".ttft", "TTFT": ".ttft", "fit_prefill": ".ttft", "get_llm": ".ttft",
    "measure_ttft": ".ttft",
}


def __getattr__(name: str):
    # Loaded on first use: the counters and timers import torch (seconds), the cache does not.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COUNTERS",
    "LATENCY_BACKENDS",
    "LLM_PRESETS",
    "Complexity",
    "Latency",
    "LatencyConfig",
    "LLMShape",
    "MeasureCache",
    "PrefillModel",
    "TTFT",
    "compare_latency",
    "count_complexity",
    "device_fingerprint",
    "fit_prefill",
    "get_llm",
    "latency_sampler",
    "measure_latency",
    "measure_ttft",
]
