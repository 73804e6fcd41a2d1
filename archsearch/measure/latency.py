"""On-device latency of a spec's deploy (reparameterised) model, with the conditions it was taken under.

Pitfalls this module exists to avoid (measured on this project's machines):

* randomly initialised FastViT nets produce denormal floats; without flushing them CPU latency is
  bimodal (45 ms vs 2.3 s medians for one model), so ``torch.set_flush_denormal(True)`` always;
* thread count changes everything: it is fixed, and recorded;
* one number hides noise: each result is a median with IQR and CV over ``repeats`` timed runs after
  ``warmup`` runs; on a shared machine compare designs with :func:`compare_latency`, which times A and
  B interleaved (A B A B ...) and reports the ratio, so drift hits both alike.

The deploy model is built directly in inference mode (``build_model(..., inference_mode=True)``),
which has exactly the structure ``reparameterize`` produces (the test suite loads one into the other).
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn

from ..build import check_fits, deploy_model, example_input
from .. import _interrupts, _scoped
from ..errors import ConfigError
from ..options import LATENCY_BACKEND_NAMES, LatencyConfig
from ..spec import ArchSpec, Resolution, parse_resolution
from ._heap import heap_mode, retained_heap
from .device import device_fingerprint, device_info

__all__ = [
    "LATENCY_BACKENDS",
    "Latency",
    "LatencyComparison",
    "LatencyConfig",
    "LatencySampler",
    "LatencyStats",
    "compare_latency",
    "latency_sampler",
    "measure_latency",
    "time_module",
    "time_modules_interleaved",
]


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    mean_ms: float
    cv: float
    min_ms: float
    max_ms: float
    repeats: int
    #: 10th percentile: interference on a shared machine only adds time, so low quantiles drift less.
    p10_ms: float = 0.0

    @classmethod
    def from_samples(cls, samples_ms: List[float]) -> "LatencyStats":
        if not samples_ms:
            raise ValueError("no samples")
        xs = sorted(samples_ms)
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0], xs[0], xs[0])
        mean = statistics.fmean(xs)
        std = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return cls(
            median_ms=statistics.median(xs),
            q1_ms=q1,
            q3_ms=q3,
            iqr_ms=q3 - q1,
            mean_ms=mean,
            cv=std / mean if mean else 0.0,
            min_ms=xs[0],
            max_ms=xs[-1],
            repeats=len(xs),
            p10_ms=statistics.quantiles(xs, n=10, method="inclusive")[0] if len(xs) > 1 else xs[0],
        )


@dataclass(frozen=True)
class Latency:
    latency_ms: float
    stats: LatencyStats
    conditions: Dict[str, object]

    def to_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "stats": asdict(self.stats), "conditions": dict(self.conditions)}

    @classmethod
    def from_dict(cls, d: dict) -> "Latency":
        return cls(d["latency_ms"], LatencyStats(**d["stats"]), d["conditions"])


# --- backends -----------------------------------------------------------------------------------
@dataclass
class _Prepared:
    """A ready-to-time forward: ``run()`` does one inference; ``sync`` waits for the device."""

    run: Callable[[], object]
    sync: Callable[[], None] = lambda: None
    timer: Optional[Callable[[Callable[[], object]], float]] = None  # returns ms; default perf_counter


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _example(spec: ArchSpec, hw: tuple[int, int], cfg: LatencyConfig) -> torch.Tensor:
    check_fits(spec, hw, batch=cfg.batch)
    return example_input(spec.in_chans, hw, batch=cfg.batch)


def _torch_forward(model: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> Callable[[], object]:
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if cfg.compile:
        model = torch.compile(model)

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def _prepare_torch_cpu(model: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> _Prepared:
    return _Prepared(run=_torch_forward(model, x, cfg))


def _prepare_cuda(model: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> _Prepared:
    if not torch.cuda.is_available():
        raise ConfigError("backend", "cuda: no CUDA device is available on this machine")
    run = _torch_forward(model.cuda(), x.cuda(), cfg)

    def timer(fn: Callable[[], object]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    return _Prepared(run=run, sync=torch.cuda.synchronize, timer=timer)


def _prepare_onnxruntime(model: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> _Prepared:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # The TorchScript exporter: the default (dynamo) one needs onnxscript, which we do not ship.
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return _Prepared(run=lambda: session.run(None, feed))


#: Latency backends by name: each turns (deploy model, example input, config) into a timed forward.
LATENCY_BACKENDS: Dict[str, Callable[[nn.Module, torch.Tensor, LatencyConfig], _Prepared]] = {
    "torch-cpu": _prepare_torch_cpu,
    "cuda": _prepare_cuda,
    "onnxruntime": _prepare_onnxruntime,
}
assert tuple(LATENCY_BACKENDS) == LATENCY_BACKEND_NAMES


def _timed(prepared: _Prepared) -> float:
    if prepared.timer is not None:
        return prepared.timer(prepared.run)
    start = time.perf_counter_ns()
    prepared.run()
    prepared.sync()
    return (time.perf_counter_ns() - start) / 1e6


def _conditions(cfg: LatencyConfig, hw: tuple[int, int], repeats: int) -> Dict[str, object]:
    device = cfg.device
    return {
        "backend": cfg.backend,
        "device": device_info(device),
        "device_fingerprint": device_fingerprint(device),
        "threads": cfg.threads,
        "warmup": cfg.warmup,
        "repeats": repeats,
        "batch": cfg.batch,
        "resolution": list(hw),
        "dtype": "float32",
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "flush_denormal": True,
        "heap": heap_mode(cfg.retain_heap),
        "model_form": "reparameterized",
    }


@contextlib.contextmanager
def _timing_environment(cfg: LatencyConfig) -> Iterator[None]:
    # Random-init FastViT nets are bimodal on CPU without flushing denormals; the caller's setting,
    # thread count and heap are restored afterwards.
    with _scoped.flush_denormal(True), _torch_threads(cfg.threads), retained_heap(cfg.retain_heap):
        yield


def time_module(module: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> LatencyStats:
    """Median-of-repeats latency of any module on ``x`` (the predictor times blocks with it)."""
    with _timing_environment(cfg):
        prepared = LATENCY_BACKENDS[cfg.backend](module.eval(), x, cfg)
        return LatencyStats.from_samples(_sample(prepared, cfg))


def _sample(prepared: _Prepared, cfg: LatencyConfig) -> List[float]:
    return _round_robin([prepared], cfg)[0]


def _warm_up(prepared: Sequence[_Prepared], cfg: LatencyConfig) -> None:
    for _ in range(cfg.warmup):
        _interrupts.check()
        for p in prepared:
            p.run()
    for p in prepared:
        p.sync()


def _rounds(cfg: LatencyConfig) -> Iterator[int]:
    """``repeats`` timing rounds, fewer when ``time_budget_s`` has run out after a round (never fewer than 3)."""
    deadline = None if cfg.time_budget_s is None else time.monotonic() + cfg.time_budget_s
    for i in range(cfg.repeats):
        _interrupts.check()  # a safe point every round: Ctrl-C stops thousands of repeats at once
        yield i
        if deadline is not None and i >= 2 and time.monotonic() > deadline:
            return


def _round_robin(prepared: Sequence[_Prepared], cfg: LatencyConfig) -> List[List[float]]:
    """Warm up, then time each forward in turn (A B A B ... for two), ``repeats`` rounds or the budget."""
    _warm_up(prepared, cfg)
    samples: List[List[float]] = [[] for _ in prepared]
    for _ in _rounds(cfg):
        for p, out in zip(prepared, samples):
            out.append(_timed(p))
    return samples


def time_modules_interleaved(
    a: tuple[nn.Module, torch.Tensor], b: tuple[nn.Module, torch.Tensor], cfg: LatencyConfig, *, max_burst: int = 5
) -> tuple[LatencyStats, LatencyStats, LatencyStats]:
    """(A stats, B stats, A/B ratio stats) for two (module, input) pairs timed A B A B ...

    When A takes much longer than B (a whole model at 1024 px against the predictor's 30 ms probe),
    B runs in a burst after each A, of up to ``max_burst`` runs costing at most a quarter of A, and
    each pair's ratio divides by the burst's median: on a shared machine one B run caught by another
    tenant moved a pair's ratio by up to 50%.
    """
    with _timing_environment(cfg):
        pa = LATENCY_BACKENDS[cfg.backend](a[0].eval(), a[1], cfg)
        pb = LATENCY_BACKENDS[cfg.backend](b[0].eval(), b[1], cfg)
        _warm_up([pa, pb], cfg)
        ta: List[float] = []
        tb: List[float] = []
        ratios: List[float] = []
        burst: Optional[int] = None
        for _ in _rounds(cfg):
            x, ys = _timed(pa), [_timed(pb)]
            if burst is None:  # sized on the first pair
                burst = max(1, min(max_burst, int(x / (4 * ys[0]))))
            ys += [_timed(pb) for _ in range(burst - 1)]
            ta.append(x)
            tb += ys
            ratios.append(x / statistics.median(ys))
    return LatencyStats.from_samples(ta), LatencyStats.from_samples(tb), LatencyStats.from_samples(ratios)


def _prepare_spec(spec: ArchSpec, hw: tuple[int, int], cfg: LatencyConfig) -> _Prepared:
    return LATENCY_BACKENDS[cfg.backend](deploy_model(spec, resolution=hw), _example(spec, hw, cfg), cfg)


def measure_latency(spec: ArchSpec, resolution: Resolution, config: Optional[LatencyConfig] = None) -> Latency:
    """The median of ``repeats`` timed forwards; above the declared spread (``max_cv``) the model is timed
    again, up to ``noisy_retries`` times, and the steadiest attempt kept; still above it, the result says
    ``noisy: true`` in its conditions (the Measurer does not cache it)."""
    cfg = config or LatencyConfig()
    hw = parse_resolution(resolution)
    attempts: List[LatencyStats] = []
    with _timing_environment(cfg):
        prepared = _prepare_spec(spec, hw, cfg)
        for _ in range(1 + cfg.noisy_retries):
            attempts.append(LatencyStats.from_samples(_sample(prepared, cfg)))
            if attempts[-1].cv <= cfg.max_cv:
                break
    stats = min(attempts, key=lambda a: a.cv)
    conditions = _conditions(cfg, hw, stats.repeats)
    conditions.update(noisy=stats.cv > cfg.max_cv, max_cv=cfg.max_cv, attempts=len(attempts))
    return Latency(stats.median_ms, stats, conditions)


@dataclass(frozen=True)
class LatencySampler:
    """``sample(n)``: n more timed forwards of a model built and warmed up once."""

    sample: Callable[[int], List[float]]
    #: As in :class:`Latency`, less ``repeats``, which is the caller's to count.
    conditions: Dict[str, object]


@contextlib.contextmanager
def latency_sampler(
    spec: ArchSpec, resolution: Resolution, config: Optional[LatencyConfig] = None
) -> Iterator[LatencySampler]:
    """Time a spec's deploy model on demand, under :func:`measure_latency`'s conditions, for callers
    that spread repeats over time or over processes (the repeatability benchmark's sliced schedule)."""
    cfg = config or LatencyConfig()
    hw = parse_resolution(resolution)
    with _timing_environment(cfg):
        prepared = _prepare_spec(spec, hw, cfg)
        _warm_up([prepared], cfg)
        conditions = _conditions(cfg, hw, 0)
        conditions.pop("repeats")
        yield LatencySampler(lambda n: [_timed(prepared) for _ in range(n)], conditions)


@dataclass(frozen=True)
class LatencyComparison:
    """``ratio`` = latency(A) / latency(B), from pairs timed back to back."""

    ratio: LatencyStats  # in units of "ratio", not ms
    a: LatencyStats
    b: LatencyStats
    conditions: Dict[str, object]

    def to_dict(self) -> dict:
        return {"ratio": asdict(self.ratio), "a": asdict(self.a), "b": asdict(self.b), "conditions": self.conditions}


def compare_latency(
    a: ArchSpec,
    b: ArchSpec,
    resolution: Resolution,
    config: Optional[LatencyConfig] = None,
    *,
    resolution_b: Optional[Resolution] = None,
) -> LatencyComparison:
    """Time A and B interleaved (A B A B ...); the per-pair ratio survives a drifting, shared machine."""
    cfg = config or LatencyConfig()
    hw_a = parse_resolution(resolution)
    hw_b = parse_resolution(resolution_b) if resolution_b is not None else hw_a
    a_stats, b_stats, ratio = time_modules_interleaved(
        (deploy_model(a, resolution=hw_a), _example(a, hw_a, cfg)), (deploy_model(b, resolution=hw_b), _example(b, hw_b, cfg)), cfg
    )
    conditions = _conditions(cfg, hw_a, a_stats.repeats)
    conditions.update(resolution_b=list(hw_b), interleaved=True)
    return LatencyComparison(ratio, a_stats, b_stats, conditions)
