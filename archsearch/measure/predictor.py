"""Per-device latency predictor: a lookup table of measured component latencies, summed per spec.

A spec at a resolution decomposes into components, each keyed by its configuration and input size:
the stem, each stage's patch embedding and positional encoding, one block per stage (a stage of
depth d costs d blocks: its blocks are identical), and the final conv. Each component is timed in
isolation, built by the same builder functions as the model, in deploy form. Isolated timings miss
some of what a whole network pays (cache reuse across blocks, allocator behaviour), so calibration
also measures a few whole models and fits one scale factor: the median of measured / summed.

Tables live under the cache directory, one per (device fingerprint, backend, threads).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..build import build_final_conv, build_stage, build_stem
from ..errors import ConfigError
from ..spec import ArchSpec, Resolution, parse_resolution
from .cache import default_cache_dir
from .device import device_fingerprint, device_info
from .latency import LatencyConfig, measure_latency, time_module

__all__ = ["Component", "LatencyPredictor", "components"]


@dataclass(frozen=True)
class Component:
    key: str
    count: int
    #: Builds (deploy-form module, example input); not part of identity.
    make: Callable[[], Tuple[nn.Module, torch.Tensor]] = field(compare=False, repr=False)


def _input(c: int, hw: Tuple[int, int]) -> torch.Tensor:
    return torch.randn(1, c, *hw, generator=torch.Generator().manual_seed(0))


def components(spec: ArchSpec, resolution: Resolution) -> List[Component]:
    """The table entries a spec at a resolution is made of, with how many times each occurs."""
    hw = parse_resolution(resolution)
    out: List[Component] = []
    h, w = hw
    out.append(
        Component(
            f"stem:{spec.in_chans}>{spec.stages[0].width}:sb{int(spec.stem_scale_branch)}:{h}x{w}",
            1,
            lambda: (build_stem(spec, inference_mode=True), _input(spec.in_chans, hw)),
        )
    )
    grid_in = spec.stem_grid(hw)
    dim_in = spec.stages[0].width
    for stage, grid in zip(spec.stages, spec.stage_grids(hw)):
        one = dataclasses.replace(stage, depth=1)

        def piece(attr: str, one=one, dim_in=dim_in, c_in=dim_in, g=grid_in, idx: Optional[int] = None):
            def make() -> Tuple[nn.Module, torch.Tensor]:
                torch.manual_seed(0)
                module = getattr(build_stage(spec, one, dim_in, [0.0], inference_mode=True), attr)
                return (module[idx] if idx is not None else module), _input(c_in, g)

            return make

        if stage.downsample or dim_in != stage.width:
            out.append(
                Component(
                    f"embed:{dim_in}>{stage.width}:s{2 if stage.downsample else 1}:p{spec.down_patch_size}"
                    f":se{int(stage.se_downsample)}:act{int(spec.lkc_act)}:{grid_in[0]}x{grid_in[1]}",
                    1,
                    piece("downsample"),
                )
            )
        if stage.pos_enc != "none":
            out.append(
                Component(
                    f"{stage.pos_enc}:w{stage.width}:k{stage.cpe_kernel}:{grid[0]}x{grid[1]}",
                    1,
                    piece("pos_emb", c_in=stage.width, g=grid),
                )
            )
        mixer = (
            f"attention:{spec.norm}:hd{spec.head_dim}" if stage.token_mixer == "attention" else f"repmixer:k{spec.repmixer_kernel}"
        )
        out.append(
            Component(
                f"block:{mixer}:w{stage.width}:r{stage.mlp_ratio:g}:ls{int(spec.layer_scale)}:{grid[0]}x{grid[1]}",
                stage.depth,
                piece("blocks", c_in=stage.width, g=grid, idx=0),
            )
        )
        grid_in, dim_in = grid, stage.width
    if spec.final_conv:
        g = grid_in
        out.append(
            Component(
                f"final:{dim_in}>{spec.out_channels}:{g[0]}x{g[1]}",
                1,
                lambda: (build_final_conv(spec, inference_mode=True), _input(spec.stages[-1].width, g)),
            )
        )
    return out


class LatencyPredictor:
    """``predict(spec, resolution)`` in ms from a per-device table; missing entries can be measured."""

    def __init__(
        self,
        config: Optional[LatencyConfig] = None,
        *,
        path: Optional[Path] = None,
        component_repeats: int = 7,
        statistic: str = "median",
    ) -> None:
        if statistic not in ("median", "p10"):
            raise ConfigError("statistic", f"{statistic!r} is not one of: median, p10")
        #: Which per-component statistic is summed: the median, or the 10th percentile (less affected
        #: by other tenants of a shared machine, whose interference only ever adds time).
        self.statistic = statistic
        self.config = config or LatencyConfig()
        self.component_config = dataclasses.replace(self.config, warmup=2, repeats=component_repeats, time_budget_s=2.0)
        device = "cuda" if self.config.backend == "cuda" else "cpu"
        self.device = device
        name = f"{device_fingerprint(device)}-{self.config.backend}-t{self.config.threads}.json"
        self.path = path or default_cache_dir() / "latency_lut" / name
        self.entries: Dict[str, dict] = {}
        self.scale: float = 1.0
        self.fit: dict = {}
        self._all_fits: Dict[str, dict] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries = data.get("entries", {})
            self.fit = data.get("fit", {}).get(statistic, {})
            self._all_fits = data.get("fit", {})
            self.scale = float(self.fit.get("scale", 1.0))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "conditions": {
                "backend": self.config.backend,
                "threads": self.config.threads,
                "device": device_info(self.device),
                "component_repeats": self.component_config.repeats,
            },
            "fit": {**self._all_fits, self.statistic: self.fit},
            "entries": self.entries,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)

    def _has(self, key: str) -> bool:
        return key in self.entries and f"{self.statistic}_ms" in self.entries[key]

    def missing(self, spec: ArchSpec, resolution: Resolution) -> List[Component]:
        return [c for c in components(spec, resolution) if not self._has(c.key)]

    def measure_components(self, comps: Iterable[Component], progress: Optional[Callable[[str], None]] = None) -> int:
        done = 0
        for comp in comps:
            if self._has(comp.key):
                continue
            module, x = comp.make()
            stats = time_module(module, x, self.component_config)
            self.entries[comp.key] = {
                "median_ms": stats.median_ms, "p10_ms": stats.p10_ms, "iqr_ms": stats.iqr_ms, "repeats": stats.repeats
            }
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
        return sum(c.count * self.entries[c.key][f"{self.statistic}_ms"] for c in comps)

    def predict(self, spec: ArchSpec, resolution: Resolution, *, measure_missing: bool = True) -> float:
        return self.scale * self.raw_sum_ms(spec, resolution, measure_missing=measure_missing)

    def fit_scale(self, pairs: Sequence[Tuple[ArchSpec, Resolution]], progress: Optional[Callable[[str], None]] = None) -> dict:
        """Measure whole models and set ``scale`` = median(measured / table sum)."""
        ratios, rows = [], []
        for spec, res in pairs:
            raw = self.raw_sum_ms(spec, res, measure_missing=True)
            stats = measure_latency(spec, res, self.config).stats
            measured = stats.p10_ms if self.statistic == "p10" else stats.median_ms
            ratios.append(measured / raw)
            rows.append({"spec_hash": spec.spec_hash, "arch": spec.code, "resolution": res, "sum_ms": raw, "measured_ms": measured})
            if progress:
                progress(spec.code)
        if ratios:
            self.scale = statistics.median(ratios)
            self.fit = {"scale": self.scale, "ratios": ratios, "specs": rows, "statistic": self.statistic}
            self.save()
        return self.fit
