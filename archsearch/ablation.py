"""One-factor ablations: a base spec, named variants as edits of it, a grid of resolutions, metrics.

Edits are data: OmegaConf dotlist assignments on the spec (``stages.4.downsample=false``), stages to
drop, stages to insert; each variant is validated as an ``ArchSpec`` (errors name the variant and the
key). Results are a tidy table, one row per (variant, resolution), with each metric's spread and
conditions, plus one MLflow run per row under one parent run.
"""
from __future__ import annotations

import dataclasses

import csv
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from omegaconf import MISSING

from ._config import from_data, read_yaml, resolve_relative
from .errors import ConfigError
from ._outputs import KIND_FILES, prepare_output_dir, record_outputs, write_atomic
from .metrics import OBJECTIVES, Measurer, parse_metrics
from .options import ZERO_COST_NAMES, MeasureOptions
from .progress import UnitEvent
from .references import load_spec
from ._config import apply_overrides
from .encoders import Encoder
from .spec import ArchSpec
from .tracking import Tracker
from .trials import TrackingConfig

__all__ = ["AblationConfig", "VariantConfig", "build_variants", "load_ablation", "run_ablation"]


@dataclass
class InsertStage:
    at: int = MISSING
    stage: Dict[str, Any] = MISSING


@dataclass
class VariantConfig:
    name: str = MISSING
    #: Start from another spec (reference name or YAML) instead of the ablation's base.
    spec: Optional[str] = None
    edits: List[str] = field(default_factory=list)
    drop_stages: List[int] = field(default_factory=list)
    insert_stages: List[InsertStage] = field(default_factory=list)
    description: str = ""


@dataclass
class AblationConfig:
    name: str = MISSING
    base: str = MISSING
    variants: List[VariantConfig] = MISSING
    resolutions: List[int] = MISSING
    metrics: List[str] = field(default_factory=lambda: ["tokens", "macs", "latency"])
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    #: Overrides applied by ``--quick`` (a smoke test that keeps the same variants).
    quick: List[str] = field(default_factory=list)
    description: str = ""
    base_dir: str = "."

    def __post_init__(self) -> None:
        if not self.variants:
            raise ConfigError("variants", "at least one variant is needed")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ConfigError("variants", f"duplicate variant names in {names}")
        if not self.resolutions or min(self.resolutions) < 1:
            raise ConfigError("resolutions", f"need positive resolutions, got {self.resolutions}")
        try:
            parse_metrics(self.metrics)
        except ConfigError as e:
            raise ConfigError("metrics", e.message) from None

    def resolve(self, path: str) -> str:
        """A path written in the file, found from the file's folder (see :func:`resolve_relative`)."""
        return resolve_relative(path, self.base_dir)


def load_ablation(path: str | Path, overrides: Sequence[str] = (), *, quick: bool = False) -> AblationConfig:
    data = read_yaml(path)
    if quick and isinstance(data, dict):
        quick_overrides = data.get("quick") or []
        if not isinstance(quick_overrides, list):
            raise ConfigError("quick", "expected a list of KEY=VALUE overrides")
        data = apply_overrides(data, [str(o) for o in quick_overrides])
    data = apply_overrides(data, overrides)
    if isinstance(data, dict):
        data = {**data, "base_dir": str(Path(path).parent)}
    try:
        return from_data(AblationConfig, data)
    except ConfigError as e:
        raise ConfigError(e.key, f"{e.message} (in {path})") from None


def _apply(spec: ArchSpec, variant: VariantConfig, key: str) -> ArchSpec:
    data = spec.to_dict()
    stages = list(data["stages"])
    for i in sorted(variant.drop_stages, reverse=True):
        if not 0 <= i < len(stages):
            raise ConfigError(f"{key}.drop_stages", f"no stage {i} (the spec has {len(stages)})")
        stages.pop(i)
    for ins in variant.insert_stages:
        if not 0 <= ins.at <= len(stages):
            raise ConfigError(f"{key}.insert_stages", f"cannot insert at {ins.at} (the spec has {len(stages)} stages)")
        stages.insert(ins.at, dict(ins.stage))
    data["stages"] = stages
    data = apply_overrides(data, variant.edits, source=f"{key}.edits")
    data["name"] = variant.name
    try:
        return ArchSpec.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e.key}" if e.key else key, e.message) from None


def _load(name: str, key: str) -> Encoder:
    try:
        return load_spec(name)
    except ConfigError as e:
        raise ConfigError(key, e.message) from None


def _variant(base, v: VariantConfig, i: int):
    spec = _load(v.spec, f"variants[{i}].spec") if v.spec else base
    if not isinstance(spec, ArchSpec):  # a reference encoder (timm:MODEL): measured as it is
        if v.edits or v.drop_stages or v.insert_stages:
            raise ConfigError(f"variants[{i}] ({v.name})", f"{spec.code} is a reference encoder: it takes no edits")
        return spec.replace(name=v.name)
    return _apply(spec, v, f"variants[{i}] ({v.name})")


def build_variants(cfg: AblationConfig) -> List[ArchSpec]:
    base = _load(cfg.resolve(cfg.base), "base")
    variants = [dataclasses.replace(v, spec=cfg.resolve(v.spec)) if v.spec else v for v in cfg.variants]
    return [_variant(base, v, i) for i, v in enumerate(variants)]


def _flat_row(variant: str, row: dict) -> dict:
    out = {"variant": variant, "arch": row["arch"], "spec_hash": row["spec_hash"], "resolution": row["resolution"]}
    for key in (*OBJECTIVES, "stride"):
        if key in row:
            out[key] = row[key]
    for name in ZERO_COST_NAMES:
        if f"{name}_conditions" in row:
            out["proxy_resolution"] = row[f"{name}_conditions"]["input_side"]
    if "train" in row:
        t = row["train"]
        out.update(train_data=t["data"], train_steps=t["steps"], train_resolution=t["resolution"],
                   train_width_mult=t["width_mult"], train_max_depth=t["max_depth"], train_seed=t["seed"],
                   train_seconds=t["seconds"])
    if "latency" in row:
        lat = row["latency"]
        out.update(latency_iqr_ms=lat["iqr_ms"], latency_p10_ms=lat["p10_ms"], latency_repeats=lat["repeats"],
                   latency_threads=lat["threads"], latency_backend=lat["backend"])
    if "ttft" in row:
        t = row["ttft"]
        out.update(encoder_ms=t["encoder_ms"], prefill_ms=t["prefill_ms"], llm=t["llm"], prompt_tokens=t["prompt_tokens"],
                   prefill_extrapolated=t["prefill"]["extrapolated"])
    return out


def run_ablation(
    cfg: AblationConfig,
    out: Path,
    *,
    command: str = "",
    on_row: Optional[Callable[[UnitEvent], None]] = None,
    warn: Optional[Callable[[str], None]] = None,
    overwrite: bool = False,
) -> List[dict]:
    """Measure every (variant, resolution); write ``results.csv``, ``results.json`` and ``ablation.json`` into ``out``
    (an empty directory, or with ``overwrite`` one whose files of an earlier ablation are replaced, no other)."""
    warn = warn or logging.getLogger("archsearch").warning
    specs = build_variants(cfg)
    metrics = parse_metrics(cfg.metrics)
    measurer = Measurer(cfg.measure)
    if "ttft" in metrics:
        _ = measurer.llm  # a bad LLM name fails before any measurement
    out = prepare_output_dir(out, "ablate", overwrite=overwrite)
    tracker = Tracker(cfg.tracking, warn)
    parent = tracker.start_study(f"ablation:{cfg.name}", {"base": cfg.base, "metrics": ",".join(metrics),
                                                          "resolutions": ",".join(map(str, cfg.resolutions))})
    rows, full = [], []
    start = time.perf_counter()
    for spec in specs:
        for res in cfg.resolutions:
            row = measurer.measure(spec, res, metrics)
            flat = _flat_row(spec.name, row)
            rows.append(flat)
            full.append(row)
            numeric = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            tracker.log_trial(parent, study_name=f"ablation:{cfg.name}", number=len(rows) - 1, state="COMPLETE",
                              params={"variant": spec.name, "resolution": res, "spec": spec.to_dict()}, metrics=numeric,
                              tags={"variant": spec.name, "spec_hash": spec.spec_hash}, spec_yaml=spec.to_yaml())
            if on_row:
                on_row(UnitEvent(len(rows), len(specs) * len(cfg.resolutions), f"{spec.name} @ {res} px",
                                 time.perf_counter() - start))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "results.csv", buf.getvalue())
    write_atomic(out / "results.json", json.dumps(full, indent=1, default=str))
    meta = {
        "name": cfg.name, "description": cfg.description, "base": cfg.base, "metrics": metrics,
        "resolutions": cfg.resolutions, "variants": [{"name": s.name, "arch": s.code, "spec": s.to_dict(),
                                                     "description": v.description} for s, v in zip(specs, cfg.variants)],
        "measure": asdict(cfg.measure), "command": command, "seconds": round(time.perf_counter() - start, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    write_atomic(out / "ablation.json", json.dumps(meta, indent=1))
    record_outputs(out, "ablate", KIND_FILES["ablate"])
    tracker.log_study_artifacts(parent, out)
    tracker.finish_study(parent)
    return rows
