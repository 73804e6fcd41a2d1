"""Per-device latency predictor: a lookup table of measured component latencies, summed per spec.

A spec at a resolution decomposes into components, each keyed by its configuration and input size:
the stem, each stage's patch embedding and positional encoding, one block per stage (a stage of
depth d costs d blocks: its blocks are identical), and the final conv. Each component is timed in
isolation, built by the same builder functions as the model, in deploy form. Isolated timings miss
some of what a whole network pays (cache reuse across blocks, allocator behaviour), so calibration
also measures a dozen whole models and fits ``measured = scale * sum ** exponent`` in log space.

The ``relative`` statistic makes the table survive a drifting machine: every component (and every
whole model of the scale fit) is timed interleaved with a fixed *probe* (the whole deploy
FastViT-T8 at 256 px) and stored as the median of the per-pair ratios, in probe units. A
prediction is the summed ratio times the probe's latency: the one recorded at calibration, or one
re-timed now (:meth:`LatencyPredictor.rebase`, a fraction of a second), which puts the prediction on
the machine's current speed. On the 2-vCPU VM, whose speed drifts 20-50% within minutes, absolute
tables missed the whole-model latency by 17-27% (median); see ``benchmarks/results/``.

Tables live under the cache directory, one per (device fingerprint, backend, threads).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import MeasurementError

from ..build import deploy_model
from ..errors import ConfigError
from ..options import PREDICTOR_FIT
from ..spec import ArchSpec, Resolution, parse_resolution
from .cache import default_cache_dir, set_aside
from ._heap import heap_mode
from ._components import Component, components, probe
from .latency import LatencyConfig, _example, latency_device, measure_latency, time_module, time_modules_interleaved

__all__ = ["Component", "LatencyPredictor", "STATISTICS", "components", "probe"]

#: What a table entry holds: the component's median or 10th-percentile ms, or its median ratio to the probe.
STATISTICS = ("median", "p10", "relative")


class LatencyPredictor:
    """``predict(spec, resolution)`` in ms from a per-device table; missing entries can be measured."""

    def __init__(
        self,
        config: Optional[LatencyConfig] = None,
        *,
        path: Optional[Path] = None,
        component_repeats: int = 7,
        statistic: str = "relative",
    ) -> None:
        if statistic not in STATISTICS:
            raise ConfigError("statistic", f"{statistic!r} is not one of: {', '.join(STATISTICS)}")
        #: Which per-component statistic is summed: the median, the 10th percentile (less affected by
        #: other tenants of a shared machine, whose interference only ever adds time), or the median
        #: ratio to the probe timed interleaved (``relative``; drift cancels).
        self.statistic = statistic
        self.config = config or LatencyConfig()
        self.component_config = dataclasses.replace(self.config, warmup=2, repeats=component_repeats, time_budget_s=2.0)
        device = self.config.device
        self.device = device
        # Tables timed with and without a retained heap differ by the page faults (~25% here).
        heap = "" if self.config.backend == "remote" else f"-heap-{heap_mode(self.config.retain_heap)}"  # the device's own
        name = f"{latency_device(self.config)[1]}-{self.config.backend}-t{self.config.threads}{heap}.json"
        if Path(name).name != name or name.startswith("."):  # a device's fingerprint names this file: never a path
            raise MeasurementError(f"device fingerprint {latency_device(self.config)[1][:40]!r} cannot name a table file")
        self.path = path or default_cache_dir() / "latency_lut" / name
        self.entries: Dict[str, dict] = {}
        self.scale: float = 1.0
        #: measured = scale * sum ** exponent: the exponent absorbs whatever grows with network size
        #: and isolated blocks miss (cache misses; page faults, 1.0-1.3 with glibc's default heap);
        #: with the heap retained it fitted 0.98 here.
        self.exponent: float = 1.0
        #: The summed ratios the fit saw (smallest, largest): beyond them the fitted curve is not
        #: extrapolated (see :meth:`_apply`).
        self.sum_range: Optional[Tuple[float, float]] = None
        self.fit: dict = {}
        self._all_fits: Dict[str, dict] = {}
        #: Probe medians (ms) seen while calibrating (relative tables); their median converts to ms.
        self.probe_samples_ms: List[float] = []
        self._rebased_ms: Optional[float] = None
        self._probe: Optional[Tuple[nn.Module, torch.Tensor]] = None
        data = self._read_table()
        if data:
            self.entries = data.get("entries", {})
            self.probe_samples_ms = data.get("probe_samples_ms", [])
            self.fit = data.get("fit", {}).get(statistic, {})
            self._all_fits = data.get("fit", {})
            self.scale = float(self.fit.get("scale", 1.0))
            self.exponent = float(self.fit.get("exponent", 1.0))
            self.sum_range = _sum_range(self.fit)

    def _read_table(self) -> dict:
        """The stored table; a damaged one (cut short, not JSON, wrong shape) is set aside: it is only a cache."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(isinstance(data.get(k, t()), t) for k, t in
                                                      (("entries", dict), ("fit", dict), ("probe_samples_ms", list))):
                raise ValueError("not a latency table")
            return data
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as e:
            set_aside(self.path, f"{type(e).__name__}: {str(e)[:80]}")
            return {}

    def identity(self) -> dict:
        """What prices a prediction: the table, its statistic, fit and probe speed (stored on a study)."""
        if self.statistic == "relative" and self.probe_ms is None:
            self.rebase()
        return {"table": self.path.name, "statistic": self.statistic, "scale": self.scale, "exponent": self.exponent,
                "probe_ms": self.probe_ms if self.statistic == "relative" else None,
                "fit_specs": len(self.fit.get("specs", [])), "entries": len(self.entries),
                "sum_range": list(self.sum_range) if self.sum_range else None}

    def freeze(self, identity: dict) -> None:
        """Price every prediction from now on with ``identity``'s fit and probe speed (a study's scale):
        components measured later are ratios to the probe, so they join the same scale."""
        self.scale, self.exponent = float(identity["scale"]), float(identity["exponent"])
        self.sum_range = tuple(identity["sum_range"]) if identity.get("sum_range") else None
        if identity.get("probe_ms") is not None:
            self._rebased_ms = float(identity["probe_ms"])

    def save(self) -> None:
        """Write the table. Processes sharing it (search workers) merge under a file lock, and an entry
        already on disk wins: a component measured twice at once gets one value for everyone."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            disk = self._read_table()
            for key, entry in disk.get("entries", {}).items():
                self.entries[key] = {**self.entries.get(key, {}), **entry}
            self._write()

    def _write(self) -> None:
        data = {
            "conditions": {
                "backend": self.config.backend,
                "threads": self.config.threads,
                "heap": heap_mode(self.config.retain_heap),
                "device": latency_device(self.config)[0],
                "component_repeats": self.component_config.repeats,
            },
            "fit": {**self._all_fits, self.statistic: self.fit},
            "probe_samples_ms": self.probe_samples_ms,
            "entries": self.entries,
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)

    @property
    def _field(self) -> str:
        return "relative" if self.statistic == "relative" else f"{self.statistic}_ms"

    def _has(self, key: str) -> bool:
        return key in self.entries and self._field in self.entries[key]

    def _probe_pair(self) -> Tuple[nn.Module, torch.Tensor]:
        if self._probe is None:
            self._probe = probe()
        return self._probe

    def _time_vs_probe(self, pair: Tuple[nn.Module, torch.Tensor], config: LatencyConfig):
        a, b, ratio = time_modules_interleaved(pair, self._probe_pair(), config)
        self.probe_samples_ms.append(b.median_ms)
        self.probe_samples_ms = self.probe_samples_ms[-200:]
        return a, ratio

    @property
    def probe_ms(self) -> Optional[float]:
        """The probe latency predictions are converted with: re-timed by :meth:`rebase`, else the
        median over calibration."""
        if self._rebased_ms is not None:
            return self._rebased_ms
        return statistics.median(self.probe_samples_ms) if self.probe_samples_ms else None

    def rebase(self) -> float:
        """Re-time the probe now, so that ``predict`` is in ms at the machine's current speed."""
        cfg = dataclasses.replace(self.component_config, repeats=15)
        self._rebased_ms = time_module(*self._probe_pair(), cfg).median_ms
        return self._rebased_ms

    def measure_components(self, comps: Iterable[Component], progress: Optional[Callable[[str], None]] = None) -> int:
        done = 0
        for comp in comps:
            if self._has(comp.key):
                continue
            module, x = comp.make()
            entry: Dict[str, float] = {}
            if self.statistic == "relative":
                stats, ratio = self._time_vs_probe((module, x), self.component_config)
                entry["relative"] = ratio.median_ms  # a ratio: LatencyStats is unit-free here
            else:
                stats = time_module(module, x, self.component_config)
            entry.update(median_ms=stats.median_ms, p10_ms=stats.p10_ms, iqr_ms=stats.iqr_ms, repeats=stats.repeats)
            self.entries[comp.key] = {**self.entries.get(comp.key, {}), **entry}
            done += 1
            if progress:
                progress(comp.key)
        return done

    def raw_sum_ms(self, spec: ArchSpec, resolution: Resolution, *, measure_missing: bool = False) -> float:
        comps = components(spec, resolution)
        absent = [c for c in comps if not self._has(c.key)]
        if absent:
            if not measure_missing:
                raise ConfigError(
                    "predictor", f"{len(absent)} components of {spec.code} at {resolution} are not in the table "
                    f"{self.path}; run `archsearch calibrate` or allow measuring them"
                )
            self.measure_components(absent)
            self.save()
        return sum(c.count * self.entries[c.key][self._field] for c in comps)

    def predict(self, spec: ArchSpec, resolution: Resolution, *, measure_missing: bool = True) -> float:
        """Predicted latency in ms (relative tables: at the probe speed of calibration or of ``rebase``)."""
        raw = self._apply(self.raw_sum_ms(spec, resolution, measure_missing=measure_missing))
        if self.statistic != "relative":
            return raw
        probe_ms = self.probe_ms
        if probe_ms is None:
            probe_ms = self.rebase()
        return raw * probe_ms

    def predict_relative(self, spec: ArchSpec, resolution: Resolution, *, measure_missing: bool = True) -> float:
        """Predicted latency in probe units (``relative`` tables only)."""
        if self.statistic != "relative":
            raise ConfigError("statistic", "predict_relative needs a 'relative' table")
        return self._apply(self.raw_sum_ms(spec, resolution, measure_missing=measure_missing))

    def _apply(self, raw: float) -> float:
        """scale * raw ** exponent within the sums the fit saw; beyond them, proportional to the sum from the
        nearest end. At 1024 px the fit's specs summed 21-228 probe units and stride-16 specs 460-850: their
        exponent of 1.015, extrapolated, over-predicted them by 14-17% where the plain sum was within 5%."""
        return _curve(raw, self.scale, self.exponent, self.sum_range)

    def measure_relative(self, spec: ArchSpec, resolution: Resolution) -> Tuple[float, float]:
        """(latency ms, latency / probe) of the whole deploy model, timed interleaved with the probe."""
        hw = parse_resolution(resolution)
        pair = (deploy_model(spec), _example(spec, hw, self.config))
        stats, ratio = self._time_vs_probe(pair, self.config)
        return stats.median_ms, ratio.median_ms

    def fit_scale(self, pairs: Sequence[Tuple[ArchSpec, Resolution]], progress: Optional[Callable[[str], None]] = None) -> dict:
        """Measure whole models and fit measured = scale * sum ** exponent (see :func:`_fit_power`)."""
        ratios, rows = [], []
        for spec, res in pairs:
            raw = self.raw_sum_ms(spec, res, measure_missing=True)
            if self.statistic == "relative":
                hw = parse_resolution(res)
                _, ratio = self._time_vs_probe((deploy_model(spec), _example(spec, hw, self.config)), self.config)
                measured, cv = ratio.median_ms, ratio.cv
            else:
                stats = measure_latency(spec, res, self.config).stats
                measured, cv = (stats.p10_ms if self.statistic == "p10" else stats.median_ms), stats.cv
            ratios.append(measured / raw)
            rows.append({"spec_hash": spec.spec_hash, "arch": spec.code, "resolution": res, "sum_ms": raw,
                         "measured_ms": measured,
                         "cv": cv, "noisy": cv > self.config.max_cv})
            if progress:
                progress(spec.code)
        noisy = [r["arch"] for r in rows if r.get("noisy")]
        if noisy:
            logging.getLogger("archsearch").warning(
                f"latency predictor fit: {len(noisy)} of {len(rows)} whole models were timed with a spread above "
                f"{self.config.max_cv} (a busy host): the fit, and every study that freezes it, inherits that noise; "
                "recalibrate on a quiet machine (a new table: another ARCHSEARCH_CACHE_DIR)")
        if ratios:
            self.scale, self.exponent = _fit_power(rows)
            self.fit = {"scale": self.scale, "exponent": self.exponent, "ratios": ratios, "specs": rows,
                        "statistic": self.statistic}
            self.sum_range = _sum_range(self.fit)
            self.save()
        return self.fit


def _curve(raw: float, scale: float, exponent: float, sum_range: Optional[Tuple[float, float]]) -> float:
    """scale * raw ** exponent, proportional to ``raw`` beyond ``sum_range`` (see ``LatencyPredictor._apply``)."""
    if sum_range and exponent != 1.0:
        lo, hi = sum_range
        end = min(max(raw, lo), hi)
        return scale * end**exponent * raw / end
    return scale * raw**exponent


def _sum_range(fit: dict) -> Optional[Tuple[float, float]]:
    sums = [r["sum_ms"] for r in fit.get("specs", [])]
    return (min(sums), max(sums)) if sums else None


def _fit_power(rows: Sequence[dict], min_points: int = 5, span: float = 3.0) -> Tuple[float, float]:
    """(scale, exponent) of measured = scale * sum ** exponent in log space, robustly: the exponent is the
    Theil-Sen slope (the median of the slopes between every two specs), the scale the median ratio.

    The exponent is fitted only when the specs span ``span``x in size and there are ``min_points``
    of them (clipped to [0.8, 1.3]); otherwise it is 1 and the scale is the median ratio. Least squares
    let one whole model timed at half its summed blocks (a probe run caught by another tenant) pull the
    512 px exponent to 0.93 and mis-price the other specs by up to 27%.
    """
    import math

    xs = [math.log(r["sum_ms"]) for r in rows]
    ys = [math.log(r["measured_ms"]) for r in rows]
    if len(rows) < min_points or max(xs) - min(xs) < math.log(span):
        return statistics.median(math.exp(y - x) for x, y in zip(xs, ys)), 1.0
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs))
              if abs(xs[j] - xs[i]) > 1e-9]
    b = min(1.3, max(0.8, statistics.median(slopes)))
    a = statistics.median(math.exp(y - b * x) for x, y in zip(xs, ys))
    return a, b


def calibrate(
    spaces: Sequence[str],
    *,
    config: Optional[LatencyConfig] = None,
    statistic: str = "relative",
    n: int = 15,
    fit: int = PREDICTOR_FIT,
    seed: int = 1000,
    resolution: Optional[str] = None,
    progress: Optional[Callable[[str, int], None]] = None,
) -> dict:
    """Fill this device's block table from ``n`` specs drawn from each space, then fit scale and exponent
    on ``fit`` whole models spread over those specs; returns what was done (the CLI prints it)."""
    import time

    from ..space import draw, load_space

    overrides = [f"resolution=[{resolution}]"] if resolution else []
    predictor = LatencyPredictor(config or LatencyConfig(), statistic=statistic)
    candidates = []
    for path in spaces:
        found, _ = draw(load_space(path, overrides), n, seed=seed)
        candidates += found
    start = time.perf_counter()
    comps = {c.key: c for cand in candidates for c in components(cand.spec, cand.resolution)}
    before = len(predictor.entries)
    for comp in comps.values():
        predictor.measure_components([comp])
        if progress:
            progress("block table", len(comps))
    predictor.save()
    fit_on = candidates[:: max(1, len(candidates) // max(fit, 1))][:fit]
    result = predictor.fit_scale([(c.spec, c.resolution) for c in fit_on],
                                 progress=lambda _: progress and progress("whole models (scale fit)", len(fit_on)))
    return {
        "table": str(predictor.path), "entries": len(predictor.entries), "new_entries": len(predictor.entries) - before,
        "statistic": predictor.statistic, "scale": predictor.scale, "exponent": predictor.exponent,
        "probe_ms": predictor.probe_ms, "fit_ratios": result.get("ratios", []),
        "seconds": round(time.perf_counter() - start, 1), "backend": predictor.config.backend,
        "threads": predictor.config.threads,
    }
