"""The one metric registry: every named quantity ``measure``, a search and an ablation can ask for.

A :class:`Metric` is a name (what ``--metrics`` and an ablation's ``metrics:`` list say), a function of
(measurer, spec, resolution) returning part of a row, and the objective values it puts in that row with
their natural direction (what a search's ``objectives:`` and ``constraints:`` name). The hardware
families come from :mod:`archsearch.measure`, the accuracy signals from :mod:`archsearch.proxy`; the
:class:`Measurer` runs them, caches every result on disk keyed by everything that decides it, and returns
plain numbers with the conditions they were taken under.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

from . import _interrupts
from .errors import ConfigError, MeasurementError
from .measure.cache import MeasureCache
from .options import ZERO_COST_NAMES, MeasureOptions
from .encoders import Encoder
from .spec import ArchSpec, Resolution, parse_resolution

_log = logging.getLogger("archsearch")

__all__ = ["METRICS", "OBJECTIVES", "Measurer", "Metric", "metric_of", "parse_metrics", "proxy_row", "refuse_nan",
           "resolve_objective"]



@dataclass(frozen=True)
class Metric:
    name: str
    #: (measurer, spec, (h, w)) -> row fields. Its spec is an Encoder; a metric of ``_SPEC_ONLY`` gets an ArchSpec.
    compute: Callable[["Measurer", Any, Tuple[int, int]], dict]
    #: Objective values this metric puts in a row -> their natural direction.
    objectives: Dict[str, str]
    doc: str = ""


#: Metrics by name, filled below where each is defined (``@_metric``).
METRICS: Dict[str, Metric] = {}


def _metric(name: str, doc: str, **objectives: str):
    def register(fn: Callable[["Measurer", ArchSpec, Tuple[int, int]], dict]):
        METRICS[name] = Metric(name, fn, dict(objectives), doc)
        return fn

    return register


class Measurer:
    """Measures and caches; one per process is enough (it holds the predictor and the prefill fit)."""

    def __init__(self, options: Optional[MeasureOptions] = None, cache: Optional[MeasureCache] = None) -> None:
        self.options = options or MeasureOptions()
        self.cache = cache if cache is not None else MeasureCache()
        self._predictor = None
        self._prefill = None
        self._llm = None

    def _cached(self, key: str, compute: Callable[[], dict]) -> dict:
        hit = self.cache.get(key)
        if hit is None:
            hit = refuse_nan(json.loads(key).get("metric", "measurement"), compute())  # never cached as a value
            self.cache.put(key, hit)
        return hit

    # --- metric families --------------------------------------------------------------------
    def complexity(self, spec: ArchSpec, resolution: Resolution):
        from .measure.flops import Complexity, count_complexity

        hw = parse_resolution(resolution)
        key = MeasureCache.key(metric="complexity", spec=spec.spec_hash, resolution=hw, counter=self.options.counter)
        return Complexity(**self._cached(key, lambda: count_complexity(spec, hw, counter=self.options.counter).to_dict()))

    def latency(self, spec: ArchSpec, resolution: Resolution):
        from .measure.latency import Latency, latency_device, measure_latency

        hw = parse_resolution(resolution)
        cfg = self.options.latency
        # The device that times it: this machine, or a remote one, whose fingerprint its server tells.
        key = MeasureCache.key(metric="latency", spec=spec.spec_hash, resolution=hw, device=latency_device(cfg)[1],
                               **cfg.cache_key())
        hit = self.cache.get(key)
        if hit is not None:
            return Latency.from_dict(hit)
        lat = measure_latency(spec, hw, cfg)
        if lat.conditions.get("noisy"):  # returned marked, never cached as a good value
            _log.warning(f"{spec.name or spec.code} at {hw[0]}x{hw[1]}: latency still noisy after {lat.conditions['attempts']} "
                         f"attempts (CV {lat.stats.cv:.2f} > {cfg.max_cv}): reported as noisy, not cached; the host is busy")
        else:
            self.cache.put(key, lat.to_dict())
        return lat

    @property
    def predictor(self):
        if self._predictor is None:
            from .measure.predictor import LatencyPredictor

            self._predictor = LatencyPredictor(self.options.latency)
        return self._predictor

    def predicted_latency_ms(self, spec: ArchSpec, resolution: Resolution) -> float:
        return self.predictor.predict(spec, resolution, measure_missing=True)

    @property
    def llm(self):
        if self._llm is None:
            from .measure.ttft import get_llm

            self._llm = get_llm(self.options.llm)
        return self._llm

    def prefill_model(self):
        if self._prefill is None:
            from .measure.ttft import fit_prefill

            cfg = dataclasses.replace(self.options.latency, warmup=1, repeats=3, time_budget_s=None)
            self._prefill = fit_prefill(self.llm, config=cfg, cache=self.cache)
        return self._prefill

    def ttft(self, spec: ArchSpec, resolution: Resolution, encoder=None):
        """TTFT with ``encoder`` (a :class:`Latency` already measured) or the cached encoder latency."""
        from .measure.ttft import measure_ttft

        return measure_ttft(spec, resolution, self.llm, prompt_tokens=self.options.prompt_tokens,
                            encoder=encoder or self.latency(spec, resolution), prefill=self.prefill_model())

    def proxy_score(self, spec: ArchSpec, name: str, resolution: Optional[Resolution] = None) -> dict:
        """A zero-cost proxy's score of ``spec`` evaluated at ``resolution`` (``options.proxy``: scaling rule,
        input side rule, data, seed), cached."""
        from .proxy.zero_cost import score_proxy

        cfg = self.options.proxy.for_candidate(_side(resolution))
        key = MeasureCache.key(metric="proxy", name=name, spec=spec.spec_hash, config=dataclasses.asdict(cfg))
        return self._cached(key, lambda: score_proxy(spec, name, cfg).to_dict())

    def training(self, spec: ArchSpec, resolution: Optional[Resolution] = None) -> dict:
        """One short training of ``spec``'s scaled copy for a candidate at ``resolution`` (``options.train``,
        whose side rule gives the input side), shared by both training metrics."""
        from .proxy.train import train_proxy

        cfg = self.options.train.for_candidate(_side(resolution))
        key = MeasureCache.key(metric="train", spec=spec.spec_hash, config=cfg.cache_key())
        return self._cached(key, lambda: train_proxy(spec, cfg).to_dict())

    def train_with_rungs(self, spec: ArchSpec, resolution: Optional[Resolution], hook) -> dict:
        """One training of ``spec``'s scaled copy decided at ``hook``'s boundaries (a multi-fidelity trial,
        :class:`~archsearch.proxy.train.RungHook`). A run that reached the last boundary is cached with its
        boundary signals: a later trial of the same spec replays its decisions from them without training."""
        from .proxy.train import TrainResult, decide_again, train_proxy

        cfg = dataclasses.replace(self.options.train.for_candidate(_side(resolution)), steps=hook.boundaries[-1])
        key = MeasureCache.key(metric="train_rungs", spec=spec.spec_hash, config=cfg.cache_key(),
                               boundaries=list(hook.boundaries), val_subset=hook.val_subset)
        hit = self.cache.get(key)
        if hit is not None:
            i = decide_again(hook, hit["boundaries"])
            return hit if i is None else {**hit, **TrainResult.from_dict(hit).stopped_at_boundary(i).to_dict()}
        result = train_proxy(spec, cfg, rungs=hook).to_dict()
        if result["stopped_at"] is None:
            self.cache.put(key, refuse_nan("train_rungs", result))
        return result

    # --- rows ---------------------------------------------------------------------------------
    def measure(self, spec: Encoder, resolution: Resolution, metrics: Sequence[str]) -> dict:
        """One flat row: identity, the requested metrics, and each metric's conditions."""
        hw = parse_resolution(resolution)
        row: dict = {
            "spec": spec.name or spec.spec_hash,
            "spec_hash": spec.spec_hash,
            "arch": spec.code,
            "resolution": hw[0] if hw[0] == hw[1] else list(hw),
        }
        for name in parse_metrics(metrics):
            _interrupts.check()
            if name in _SPEC_ONLY and not isinstance(spec, ArchSpec):
                raise ConfigError("metrics", f"{name} works on a FastViT-family spec's structure; {spec.code} is a "
                                             f"reference encoder (it has: "
                                             f"{', '.join(m for m in METRICS if m not in _SPEC_ONLY)})")
            row.update(METRICS[name].compute(self, spec, hw))
        return row

    def measure_grid(self, specs: Sequence[Encoder], resolutions: Sequence[Resolution], metrics: Sequence[str], *,
                     vs: Optional[Encoder] = None, on_row: Optional[Callable[[str], None]] = None) -> List[dict]:
        """A row per (spec, resolution); with ``vs``, each row also carries ``latency_ratio_vs``: the spec's latency
        against ``vs`` timed interleaved (the ratio survives a drifting machine). ``on_row`` hears each row's label."""
        from .measure.latency import compare_latency

        if "ttft" in parse_metrics(metrics):
            _ = self.llm  # resolve the LLM name now: a bad one is a one-line error before any timing
        rows = []
        for spec in specs:
            for res in resolutions:
                hw = parse_resolution(res)
                if on_row is not None:
                    on_row(f"{spec.name or spec.code} @ {hw[0]}x{hw[1]}")
                row = self.measure(spec, hw, metrics)
                if vs is not None:
                    # compare_latency times built modules: a timm: reference encoder compares as well as a spec.
                    cmp = compare_latency(cast(Any, spec), cast(Any, vs), hw, self.options.latency)
                    row["latency_ratio_vs"] = {"vs": vs.name or vs.spec_hash, "median": cmp.ratio.median_ms,
                                               "iqr": cmp.ratio.iqr_ms, "a_median_ms": cmp.a.median_ms,
                                               "b_median_ms": cmp.b.median_ms, **cmp.conditions}
                rows.append(row)
        return rows

    def values(self, spec: Encoder, resolution: Resolution, objectives: Sequence[str]) -> Tuple[Dict[str, float], dict]:
        """(objective values by name, the full row) for objective names such as ``macs`` or ``train_loss_sum``."""
        families = list(dict.fromkeys(metric_of(n) for n in objectives))
        row = self.measure(spec, resolution, families)
        return {n: float(row[n]) for n in objectives}, row


def nan_fields(result: dict) -> List[str]:
    """The top-level numbers of a result that came out NaN (never a value to cache or store)."""
    return [k for k, v in result.items() if isinstance(v, float) and math.isnan(v)]


def refuse_nan(what: str, result: dict) -> dict:
    """``result``, or one line when a number in it came out NaN: a NaN is never cached, stored or printed as a value."""
    nan = nan_fields(result)
    if nan:
        raise MeasurementError(f"{what}: {', '.join(nan)} came out NaN (a training that diverged?); nothing was stored")
    return result


def proxy_row(spec: ArchSpec, kind: str, config) -> dict:
    """The ``proxy`` command's row: one zero-cost score (``config`` a ProxyConfig) or one short training (``kind``
    ``train``, a TrainProxyConfig), with its seconds and the configuration it ran under."""
    if kind == "train":
        from .proxy.train import train_proxy

        r = train_proxy(spec, config)
        row = {"kind": "train", "score": r.val_top1, "val_top1": r.val_top1, "val_loss": r.val_loss,
               "train_loss": r.train_loss, "loss_sum": r.loss_sum, "history": r.history, "seconds": r.seconds,
               "config": r.config, "trained_spec_hash": r.trained_spec_hash}
    else:
        from .proxy.zero_cost import PROXIES, score_proxy

        if kind not in PROXIES:
            raise ConfigError("--kind", f"{kind!r} is not one of: {', '.join([*PROXIES, 'train'])}")
        s = score_proxy(spec, kind, config)
        row = {"kind": kind, "score": s.score, "seconds": s.seconds, "config": s.config, "scored_spec_hash": s.scored_spec_hash}
    return refuse_nan(kind, row)


def _side(resolution: Optional[Resolution]) -> Optional[int]:
    """The side a proxy's rule scales: the candidate's height (square inputs: its resolution)."""
    return None if resolution is None else parse_resolution(resolution)[0]


# --- the registry ----------------------------------------------------------------------------------

#: Metrics that scale or decompose a spec (proxies, training, the block-table predictor): not for
#: reference encoders such as ``timm:MODEL``.
_SPEC_ONLY = ("predicted_latency", "predicted_ttft", "synflow", "naswot", "grad_norm", "snip", "train_top1", "train_loss_sum")

def _latency_fields(lat) -> dict:
    s = lat.stats
    return {
        "median_ms": s.median_ms, "q1_ms": s.q1_ms, "q3_ms": s.q3_ms, "iqr_ms": s.iqr_ms, "cv": s.cv,
        "min_ms": s.min_ms, "max_ms": s.max_ms, "p10_ms": s.p10_ms, **lat.conditions,
    }


@_metric("params", "parameters of the training-form and deploy-form model", params="minimize")
def _params(m: Measurer, spec: ArchSpec, hw) -> dict:
    c = m.complexity(spec, hw)
    return {"params": c.params, "params_deploy": c.params_deploy}


@_metric("macs", "multiply-accumulates of the deploy model at batch 1 (counter: options.counter)", macs="minimize")
def _macs(m: Measurer, spec: ArchSpec, hw) -> dict:
    c = m.complexity(spec, hw)
    return {"macs": c.macs, "gmacs": round(c.gmacs, 4), "macs_by_op": c.macs_by_op, "bias_adds": c.bias_adds,
            "activations": c.activations, "macs_conditions": c.conditions}


@_metric("tokens", "visual tokens (output grid) the encoder hands to the LLM", tokens="minimize")
def _tokens(_m: Measurer, spec: ArchSpec, hw) -> dict:
    grid = list(spec.grid(hw))
    # A reference encoder's stride is what its grid gives (14 for a ViT/14, 32 for a ConvNeXt).
    return {"tokens": spec.visual_tokens(hw), "grid": grid, "stride": spec.output_stride or round(hw[0] / grid[0])}


@_metric("latency", "measured encoder latency (options.latency)", latency_ms="minimize")
def _latency(m: Measurer, spec: ArchSpec, hw) -> dict:
    lat = m.latency(spec, hw)
    return {"latency_ms": lat.latency_ms, "latency": _latency_fields(lat)}


@_metric("predicted_latency", "encoder latency from the per-device block table", predicted_latency_ms="minimize")
def _predicted(m: Measurer, spec: ArchSpec, hw) -> dict:
    p = m.predictor
    return {
        "predicted_latency_ms": m.predicted_latency_ms(spec, hw),
        "predicted_latency": {"table": str(p.path), "statistic": p.statistic, "scale": p.scale, "exponent": p.exponent,
                              "probe_ms": p.probe_ms, "backend": p.config.backend, "threads": p.config.threads},
    }


@_metric("predicted_ttft", "predicted encoder latency + fitted LLM prefill of its tokens", predicted_ttft_ms="minimize")
def _predicted_ttft(m: Measurer, spec: ArchSpec, hw) -> dict:
    enc = _predicted(m, spec, hw)
    tokens = spec.visual_tokens(hw) + m.options.prompt_tokens
    prefill = m.prefill_model()
    prefill_ms = prefill.predict_ms(tokens)
    return {**enc, "predicted_ttft_ms": enc["predicted_latency_ms"] + prefill_ms,
            "predicted_ttft": {"prefill_ms": prefill_ms, "visual_tokens": spec.visual_tokens(hw), "llm": m.options.llm,
                               "prompt_tokens": m.options.prompt_tokens, "extrapolated": tokens > prefill.max_fitted_tokens}}


@_metric("ttft", "time to first token: encoder latency + fitted LLM prefill of its tokens", ttft_ms="minimize")
def _ttft(m: Measurer, spec: ArchSpec, hw) -> dict:
    enc = m.latency(spec, hw)  # timed once (also with the cache off), and handed to the TTFT
    t = m.ttft(spec, hw, encoder=enc)
    return {
        "ttft_ms": t.ttft_ms,
        "ttft": {
            "encoder_ms": t.encoder_ms, "prefill_ms": t.prefill_ms, "visual_tokens": t.visual_tokens,
            "prompt_tokens": t.prompt_tokens, "llm": t.conditions["llm"],
            "encoder": _latency_fields(enc),
            "prefill": t.conditions["prefill"],
        },
    }


def _zero_cost_metric(name: str) -> None:
    def compute(m: Measurer, spec: ArchSpec, hw) -> dict:
        s = m.proxy_score(spec, name, hw)
        return {name: s["score"], f"{name}_conditions": {**s["config"], "input_side": s["config"]["resolution"],
                                                         "seconds": s["seconds"],
                                                         "scored_spec_hash": s["scored_spec_hash"]}}

    _metric(name, f"zero-cost proxy {name} at initialisation (options.proxy)", **{name: "maximize"})(compute)


for _name in ZERO_COST_NAMES:
    _zero_cost_metric(_name)


def _train_conditions(r: dict) -> dict:
    return {**r["config"], "input_side": r["config"]["resolution"], "seconds": r["seconds"],
            "trained_spec_hash": r["trained_spec_hash"], "history": r["history"]}


@_metric("train_top1", "validation top-1 after options.train.steps of training", train_top1="maximize")
def _train_top1(m: Measurer, spec: ArchSpec, hw) -> dict:
    r = m.training(spec, hw)
    return {"train_top1": r["val_top1"], "train": _train_conditions(r)}


@_metric("train_loss_sum", "sum of the training losses over options.train.steps (training-speed estimator)",
         train_loss_sum="minimize")
def _train_loss_sum(m: Measurer, spec: ArchSpec, hw) -> dict:
    r = m.training(spec, hw)
    return {"train_loss_sum": r["loss_sum"], "train": _train_conditions(r)}


#: Objective / constraint names -> the metric that produces them.
OBJECTIVES: Dict[str, str] = {obj: metric.name for metric in METRICS.values() for obj in metric.objectives}


def metric_of(objective: str, key: str = "objective") -> str:
    """The metric that produces ``objective`` (``macs`` -> ``macs``, ``latency_ms`` -> ``latency``)."""
    if objective not in OBJECTIVES:
        raise ConfigError(key, f"{objective!r} is not one of: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]


def resolve_objective(objective: str, key: str = "objective") -> Tuple[str, str]:
    """(metric name, natural direction) of an objective name."""
    metric = metric_of(objective, key)
    return metric, METRICS[metric].objectives[objective]


def parse_metrics(text: str | Sequence[str]) -> List[str]:
    """Metric names from ``a,b,c`` or a list; an objective name (``latency_ms``) means its metric."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("metrics", "no metric given")
    out = []
    for n in names:
        if n not in METRICS and n not in OBJECTIVES:
            raise ConfigError("metrics", f"{n!r} is not one of: {', '.join(METRICS)}")
        out.append(n if n in METRICS else OBJECTIVES[n])
    return list(dict.fromkeys(out))
