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
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..build import check_fits, deploy_model, example_input
from .. import _scoped, _timing
from .._timing import MAX_BURST, Timed
from ..errors import ConfigError
from ..options import LATENCY_BACKEND_NAMES, LatencyConfig
from ..spec import ArchSpec, Resolution, parse_resolution
from ._export import export_onnx
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
    "latency_device",
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


def _prepare_torch_cpu(model: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> Timed:
    return Timed(run=_torch_forward(model, x, cfg))


def _prepare_cuda(model: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> Timed:
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

    return Timed(run=run, sync=torch.cuda.synchronize, timer=timer)


def _prepare_onnxruntime(model: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> Timed:
    return _timing.ort_forward(export_onnx(model, x), x.numpy(), threads=cfg.threads, provider="CPUExecutionProvider")


@dataclass
class _LocalSession:
    """Forwards prepared on this machine, timed here."""

    forwards: List[Timed]
    device: Dict[str, object]
    fingerprint: str

    def round_robin(self, cfg: LatencyConfig) -> List[List[float]]:
        return _timing.round_robin(self.forwards, cfg.warmup, cfg.repeats, cfg.time_budget_s)

    def interleave(self, cfg: LatencyConfig, max_burst: int) -> Tuple[List[float], List[float], List[float]]:
        a, b = self.forwards
        return _timing.interleave(a, b, cfg.warmup, cfg.repeats, cfg.time_budget_s, max_burst=max_burst)


class _Local:
    """A backend that times on this machine: ``prepare`` turns (deploy model, input, config) into a forward."""

    def __init__(self, prepare: Callable[[nn.Module, torch.Tensor, LatencyConfig], Timed]) -> None:
        self.prepare = prepare

    def device(self, cfg: LatencyConfig) -> Tuple[Dict[str, object], str]:
        return device_info(cfg.device), device_fingerprint(cfg.device)

    def open(self, pairs: Sequence[Tuple[nn.Module, torch.Tensor]], cfg: LatencyConfig) -> _LocalSession:
        return _LocalSession([self.prepare(m.eval(), x, cfg) for m, x in pairs], *self.device(cfg))


class _Remote:
    """The ``remote`` backend, imported when first used (:mod:`archsearch.measure.remote`)."""

    def device(self, cfg: LatencyConfig) -> Tuple[Dict[str, object], str]:
        from .remote import RemoteBackend

        return RemoteBackend().device(cfg)

    def open(self, pairs: Sequence[Tuple[nn.Module, torch.Tensor]], cfg: LatencyConfig) -> Any:
        from .remote import RemoteBackend

        return RemoteBackend().open(pairs, cfg)


#: Latency backends by name. Each says which device it times on (``device(cfg)``: facts and fingerprint)
#: and opens a session on (module, input) pairs that runs the timing protocol of :mod:`archsearch._timing`:
#: here (torch CPU, CUDA, ONNX Runtime) or on a device server (``remote``, :mod:`archsearch.serve`).
LATENCY_BACKENDS: Dict[str, Any] = {
    "torch-cpu": _Local(_prepare_torch_cpu),
    "cuda": _Local(_prepare_cuda),
    "onnxruntime": _Local(_prepare_onnxruntime),
    "remote": _Remote(),
}
assert tuple(LATENCY_BACKENDS) == LATENCY_BACKEND_NAMES


def _backend(cfg: LatencyConfig) -> Any:
    return LATENCY_BACKENDS[cfg.backend]


def latency_device(cfg: LatencyConfig) -> Tuple[Dict[str, object], str]:
    """(facts, fingerprint) of the device ``cfg``'s backend times on: this machine, or the remote device."""
    return _backend(cfg).device(cfg)


def _open(pairs: Sequence[Tuple[nn.Module, torch.Tensor]], cfg: LatencyConfig) -> Any:
    return _backend(cfg).open(pairs, cfg)


def _conditions(cfg: LatencyConfig, hw: tuple[int, int], repeats: int, session: Any) -> Dict[str, object]:
    conditions: Dict[str, object] = {
        "backend": cfg.backend,
        "device": session.device,
        "device_fingerprint": session.fingerprint,
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
    if cfg.backend == "remote":
        conditions.update(url=cfg.url, provider=cfg.provider)
        for local_only in ("flush_denormal", "heap", "channels_last", "compile"):
            conditions.pop(local_only)
    return conditions


@contextlib.contextmanager
def _timing_environment(cfg: LatencyConfig) -> Iterator[None]:
    # Random-init FastViT nets are bimodal on CPU without flushing denormals; the caller's setting,
    # thread count and heap are restored afterwards.
    with _scoped.flush_denormal(True), _torch_threads(cfg.threads), retained_heap(cfg.retain_heap):
        yield


def time_module(module: nn.Module, x: torch.Tensor, cfg: LatencyConfig) -> LatencyStats:
    """Median-of-repeats latency of any module on ``x`` (the predictor times blocks with it)."""
    with _timing_environment(cfg):
        session = _open([(module, x)], cfg)
        return LatencyStats.from_samples(session.round_robin(cfg)[0])


def time_modules_interleaved(
    a: tuple[nn.Module, torch.Tensor], b: tuple[nn.Module, torch.Tensor], cfg: LatencyConfig, *, max_burst: int = MAX_BURST
) -> tuple[LatencyStats, LatencyStats, LatencyStats]:
    """(A stats, B stats, A/B ratio stats) for two (module, input) pairs timed A B A B ... with B in
    bursts when A is much longer (:func:`archsearch._timing.interleave`); on a remote device both run
    in one job there, so that the device's drift cancels as it does here."""
    with _timing_environment(cfg):
        ta, tb, ratios = _open([a, b], cfg).interleave(cfg, max_burst)
    return LatencyStats.from_samples(ta), LatencyStats.from_samples(tb), LatencyStats.from_samples(ratios)


def measure_latency(spec: ArchSpec, resolution: Resolution, config: Optional[LatencyConfig] = None) -> Latency:
    """The median of ``repeats`` timed forwards; above the declared spread (``max_cv``) the model is timed
    again, up to ``noisy_retries`` times, and the steadiest attempt kept; still above it, the result says
    ``noisy: true`` in its conditions (the Measurer does not cache it)."""
    cfg = config or LatencyConfig()
    hw = parse_resolution(resolution)
    attempts: List[LatencyStats] = []
    with _timing_environment(cfg):
        session = _open([(deploy_model(spec, resolution=hw), _example(spec, hw, cfg))], cfg)
        for _ in range(1 + cfg.noisy_retries):
            attempts.append(LatencyStats.from_samples(session.round_robin(cfg)[0]))
            if attempts[-1].cv <= cfg.max_cv:
                break
    stats = min(attempts, key=lambda a: a.cv)
    conditions = _conditions(cfg, hw, stats.repeats, session)
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
    backend = _backend(cfg)
    if not isinstance(backend, _Local):
        raise ConfigError("backend", f"{cfg.backend}: a latency sampler times on this machine only")
    with _timing_environment(cfg):
        session = backend.open([(deploy_model(spec, resolution=hw), _example(spec, hw, cfg))], cfg)
        (prepared,) = session.forwards
        _timing.warm_up([prepared], cfg.warmup)
        conditions = _conditions(cfg, hw, 0, session)
        conditions.pop("repeats")
        yield LatencySampler(lambda n: [_timing.timed(prepared) for _ in range(n)], conditions)


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
    pairs = [(deploy_model(a, resolution=hw_a), _example(a, hw_a, cfg)), (deploy_model(b, resolution=hw_b), _example(b, hw_b,
                                                                                                                     cfg))]
    with _timing_environment(cfg):
        session = _open(pairs, cfg)
        ta, tb, ratios = session.interleave(cfg, MAX_BURST)
    a_stats, b_stats, ratio = LatencyStats.from_samples(ta), LatencyStats.from_samples(tb), LatencyStats.from_samples(ratios)
    conditions = _conditions(cfg, hw_a, a_stats.repeats, session)
    conditions.update(resolution_b=list(hw_b), interleaved=True)
    return LatencyComparison(ratio, a_stats, b_stats, conditions)
