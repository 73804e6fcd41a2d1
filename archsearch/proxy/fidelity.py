"""How well does each cheap accuracy signal rank architectures the way long training does?

A fidelity study draws ``n`` specs (plus ``n_holdout`` more, kept apart) from a space and, on real data:

* **reference**: validation top-1 after ``long_steps`` of training, with two seeds; its mean is the
  target, and Kendall tau between the two seeds is the **noise ceiling** (no signal can rank better than
  training itself agrees with itself);
* **signals**, all from a third seed (independent of both reference runs): the zero-cost proxies on one
  real batch, params and MACs of the full spec, ``train_top1`` after each short budget and
  ``train_loss_sum`` (the sum of training losses, Ru et al. 2021) over each short budget, and a rank
  ensemble fixed before looking at the data;
* **scaling subset**: the first ``n_scaling`` specs trained with two seeds at every (resolution, depth
  cap) of ``scalings``, to see which scaled copy can rank the space at all.

Work is split into units (one training, or one spec's zero-cost scores). Each finished unit is appended
to ``runs.jsonl`` in the output directory as it ends, so a study killed at any point resumes where it
stopped, and units can run on another machine (``--accelerator cuda --workers 8``) and be merged.
:func:`analyse` turns ``runs.jsonl`` into ``fidelity.json``, ``report.md`` and ``tau_vs_cost.png``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .. import _interrupts
from ..errors import ConfigError
from ..progress import UnitEvent
from ..spec import ArchSpec
from ..options import ZERO_COST_NAMES, ProxyConfig, TrainProxyConfig

__all__ = ["FidelityPlan", "analyse", "plan_units", "run_study", "run_units", "write_report", "write_specs"]

RUNS_FILE, SPECS_FILE = "runs.jsonl", "specs.json"


@dataclass(frozen=True)
class FidelityPlan:
    """Everything that decides a study's numbers; stored in ``specs.json`` beside the results."""

    space: str = "search_spaces/fastvithd.yaml"
    n: int = 30
    n_holdout: int = 10
    draw_seed: int = 0
    #: The trained copy (scaling rule, data, optimiser: the library's defaults); its ``steps`` and
    #: ``val_every`` are not used (the budgets below decide them).
    train: TrainProxyConfig = field(default_factory=TrainProxyConfig)
    long_steps: int = 800
    short_steps: Tuple[int, ...] = (50, 100, 200, 400)
    reference_seeds: Tuple[int, int] = (0, 1)
    signal_seed: int = 2
    n_scaling: int = 8
    #: (resolution, depth cap) of the scaling subset; the plan's own scaling is always one of them.
    scalings: Tuple[Tuple[int, Optional[int]], ...] = ((64, 2), (64, 4), (128, 4))
    #: MACs of the full spec are counted at this side (the signal a search at that resolution has); None:
    #: at each spec's own sampled resolution (a study over resolution, whose specs differ in it).
    macs_resolution: Optional[int] = 256

    def __post_init__(self) -> None:
        if self.n < 4 or self.n_holdout < 0:
            raise ConfigError("n", f"need n >= 4 and n_holdout >= 0, got {self.n}, {self.n_holdout}")
        if not self.short_steps or min(self.short_steps) < 1 or max(self.short_steps) >= self.long_steps:
            raise ConfigError("short_steps", f"need 1 <= short budgets < long_steps ({self.long_steps}), got {self.short_steps}")
        if len(set(self.reference_seeds)) != 2 or self.signal_seed in self.reference_seeds:
            raise ConfigError("seeds", "need two different reference seeds and a third signal seed")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FidelityPlan":
        d = dict(d)
        d["train"] = TrainProxyConfig(**d["train"])
        d["short_steps"] = tuple(d["short_steps"])
        d["reference_seeds"] = tuple(d["reference_seeds"])
        d["scalings"] = tuple(tuple(s) for s in d["scalings"])
        return cls(**d)

    def training(self, steps: int, seed: int, resolution: Optional[int] = None, max_depth: Optional[int] = -1) -> TrainProxyConfig:
        cap = self.train.max_depth if max_depth == -1 else max_depth
        return dataclasses.replace(self.train, steps=steps, seed=seed, val_every=max(1, steps // 4) if steps == self.long_steps else steps,
                                   resolution=resolution or self.train.resolution, max_depth=cap)

    def zero_cost(self, seed: int, side: Optional[int] = None) -> ProxyConfig:
        t = self.train
        return ProxyConfig(width_mult=t.width_mult, max_depth=t.max_depth, round_to=t.round_to, resolution=side or t.resolution,
                           batch_size=64, seed=seed, data=t.data, data_root=t.data_root, clutter=t.clutter)

    def side(self, resolution: Optional[int]) -> int:
        """The input side the plan trains a spec sampled at ``resolution`` with (its data set's side rule)."""
        return self.train.for_candidate(resolution).resolution


# --- units -------------------------------------------------------------------------------------------

def write_specs(plan: FidelityPlan, out: Path) -> List[ArchSpec]:
    """Draw the study's specs once and store them with the plan (an existing file is reused: resume)."""
    path = Path(out) / SPECS_FILE
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if _identity(stored["plan"]) != _identity(json.loads(json.dumps(plan.to_dict()))):
            raise ConfigError("--out", f"{path} holds another plan; use another --out directory or the same options")
        return [ArchSpec.from_dict(s) for s in stored["specs"]]
    from ..space import draw, load_space

    candidates, _ = draw(load_space(plan.space), plan.n + plan.n_holdout, seed=plan.draw_seed)
    specs = [c.spec for c in candidates]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"plan": plan.to_dict(), "specs": [s.to_dict() for s in specs],
                                "resolutions": [c.resolution for c in candidates]}, indent=1), encoding="utf-8")
    return specs


#: Training options a plan does not use to decide its numbers: the budgets and validation points come from
#: the plan, the device and the data's location from the machine that runs a unit.
_NOT_IDENTITY = ("steps", "val_every", "data_root", "accelerator", "devices", "progress_bar")


def _identity(plan: dict) -> dict:
    """What makes two plans the same study (another machine's copy of the same files is the same study);
    a plan stored before an option existed has that option's default."""
    plan = json.loads(json.dumps(FidelityPlan.from_dict(plan).to_dict()))
    return {**plan, "train": {k: v for k, v in plan["train"].items() if k not in _NOT_IDENTITY}}


def load_specs(out: Path) -> Tuple[FidelityPlan, List[ArchSpec]]:
    stored = json.loads((Path(out) / SPECS_FILE).read_text(encoding="utf-8"))
    return FidelityPlan.from_dict(stored["plan"]), [ArchSpec.from_dict(s) for s in stored["specs"]]


def load_resolutions(out: Path) -> List[Optional[int]]:
    """Each spec's sampled resolution (None for a study stored before resolutions were kept)."""
    stored = json.loads((Path(out) / SPECS_FILE).read_text(encoding="utf-8"))
    return stored.get("resolutions") or [None] * len(stored["specs"])


def _unit(kind: str, index: int, spec: ArchSpec, **fields) -> dict:
    parts = [kind, f"{index:03d}", spec.spec_hash, *(f"{k}={fields[k]}" for k in sorted(fields))]
    return {"id": ":".join(parts), "kind": kind, "index": index, **fields}


def _sides(plan: FidelityPlan, resolutions: Optional[Sequence[Optional[int]]], n: int) -> List[int]:
    """The input side of each spec: its data set's side rule applied to its sampled resolution."""
    return [plan.side(r) for r in (resolutions or [None] * n)]


def plan_units(plan: FidelityPlan, specs: Sequence[ArchSpec], kinds: Iterable[str] = ("train", "zero_cost", "cpu_cost"),
               resolutions: Optional[Sequence[Optional[int]]] = None) -> List[dict]:
    """Every unit of the study, most informative first: the main specs (references, then signals), the
    hold-out specs' references, their training signals, then the scaling subset. ``resolutions``: each
    spec's sampled resolution, which its input side follows when the data set has a side rule."""
    kinds = set(kinds)
    res, cap = plan.train.resolution, plan.train.max_depth
    sides = _sides(plan, resolutions, len(specs))
    main, held_refs, held_signals = [], [], []
    for i, spec in enumerate(specs):
        refs = signals = main if i < plan.n else None
        if refs is None:
            refs, signals = held_refs, held_signals
        side = sides[i]
        if "train" in kinds:
            refs += [_unit("train", i, spec, steps=plan.long_steps, seed=s, resolution=side, max_depth=cap) for s in plan.reference_seeds]
            signals += [_unit("train", i, spec, steps=b, seed=plan.signal_seed, resolution=side, max_depth=cap) for b in plan.short_steps]
        if "zero_cost" in kinds:
            at = {} if resolutions is None or resolutions[i] is None else {"side": side, "candidate": resolutions[i]}
            refs.append(_unit("zero_cost", i, spec, seed=plan.signal_seed, **at))
        if "cpu_cost" in kinds:
            refs.append(_unit("cpu_cost", i, spec, resolution=side, max_depth=cap))
    units: List[dict] = main + held_refs + held_signals
    if "train" in kinds:
        for i, spec in enumerate(specs[: plan.n_scaling]):
            for r, c in plan.scalings:
                if (r, c) != (res, cap):
                    units += [_unit("train", i, spec, steps=plan.long_steps, seed=s, resolution=r, max_depth=c)
                              for s in plan.reference_seeds]
    return units


def _run_one(plan_dict: dict, spec_dict: dict, unit: dict, accelerator: str) -> dict:
    """One unit in a worker process (returns a JSON-able record)."""
    import torch

    plan, spec = FidelityPlan.from_dict(plan_dict), ArchSpec.from_dict(spec_dict)
    torch.set_num_threads(max(1, int(os.environ.get("ARCHSEARCH_UNIT_THREADS", "1"))))
    start = time.perf_counter()
    if unit["kind"] == "train":
        from .train import train_proxy

        cfg = dataclasses.replace(plan.training(unit["steps"], unit["seed"], unit["resolution"], unit["max_depth"]),
                                  accelerator=accelerator)
        r = train_proxy(spec, cfg)
        result = {"val_top1": r.val_top1, "val_loss": r.val_loss, "loss_sum": r.loss_sum, "train_loss": r.train_loss,
                  "history": r.history, "seconds": r.seconds, "trained_spec_hash": r.trained_spec_hash}
    elif unit["kind"] == "zero_cost":
        from ..measure.flops import count_complexity
        from .zero_cost import score_proxy

        cfg = plan.zero_cost(unit["seed"], unit.get("side"))
        result = {}
        for name in ZERO_COST_NAMES:
            s = score_proxy(spec, name, cfg)
            result[name], result[f"{name}_seconds"] = s.score, s.seconds
        t0 = time.perf_counter()
        c = count_complexity(spec, plan.macs_resolution or unit.get("candidate") or plan.train.resolution)
        result.update(params=c.params, macs=c.macs, complexity_seconds=time.perf_counter() - t0)
    elif unit["kind"] == "cpu_cost":
        from .train import train_proxy

        # CPU seconds per training step of this spec's scaled copy (the search's device), from two short
        # runs: the difference removes data preparation, start-up and validation.
        few, more = 2, 10
        cfg = plan.training(few, plan.signal_seed, unit["resolution"], unit["max_depth"])
        a = train_proxy(spec, dataclasses.replace(cfg, accelerator="cpu"))
        b = train_proxy(spec, dataclasses.replace(cfg, steps=more, val_every=more, accelerator="cpu"))
        per_step = max(0.0, (b.seconds - a.seconds) / (more - few))
        result = {"cpu_s_per_step": per_step, "cpu_fixed_s": max(0.0, a.seconds - few * per_step),
                  "threads": torch.get_num_threads()}
    else:  # pragma: no cover - plan_units makes only the kinds above
        raise ValueError(unit["kind"])
    return {**unit, "result": result, "wall_s": round(time.perf_counter() - start, 3), "device": _device(accelerator),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _device(accelerator: str) -> str:
    if accelerator == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()}:{os.cpu_count()}cores"


def done_ids(out: Path) -> set:
    """Ids of the finished units (a line cut short by a kill is skipped: that unit runs again)."""
    if not (Path(out) / RUNS_FILE).exists():
        return set()
    return {r["id"] for r in _collect(out) if "id" in r}


def run_units(
    out: Path,
    units: Sequence[dict],
    *,
    accelerator: str = "cpu",
    workers: int = 1,
    data_root: Optional[str] = None,
    deadline_s: Optional[float] = None,
    progress: Optional[Callable[[dict], None]] = None,
) -> int:
    """Run the units not yet in ``runs.jsonl`` (``workers`` processes); append each as it finishes."""
    out = Path(out)
    plan, specs = load_specs(out)
    if data_root:
        plan = dataclasses.replace(plan, train=dataclasses.replace(plan.train, data_root=data_root))
    todo = [u for u in units if u["id"] not in done_ids(out)]
    path = out / RUNS_FILE
    if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "a", encoding="utf-8") as f:  # a line cut short by a kill stays alone on its line
            f.write("\n")
    stop_at = None if deadline_s is None else time.monotonic() + deadline_s
    done = 0

    def record(rec: dict) -> None:
        nonlocal done
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        done += 1
        if progress:
            progress(rec)

    if workers <= 1:
        for u in todo:
            _interrupts.check()
            if stop_at is not None and time.monotonic() > stop_at:
                break
            record(_run_one(plan.to_dict(), specs[u["index"]].to_dict(), u, accelerator))
        return done
    import concurrent.futures as cf
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    pending = {pool.submit(_run_one, plan.to_dict(), specs[u["index"]].to_dict(), u, accelerator): u for u in todo}
    try:
        for fut in cf.as_completed(pending, timeout=None if stop_at is None else max(1.0, stop_at - time.monotonic())):
            try:
                record(fut.result())
            except Exception as e:  # noqa: BLE001 - one failed unit is reported, the others go on
                u = pending[fut]
                if progress:
                    progress({**u, "error": f"{type(e).__name__}: {e}"})
    except cf.TimeoutError:
        # The deadline stops the units in flight too (they would not be recorded): a rerun resumes them.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.terminate()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return done


# --- analysis ----------------------------------------------------------------------------------------

def _kendall(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    t = kendalltau(x, y).statistic
    return 0.0 if t is None or math.isnan(t) else float(t)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(x, y).statistic
    return 0.0 if r is None or math.isnan(r) else float(r)


def _bootstrap_tau(x: Sequence[float], y: Sequence[float], n_boot: int = 2000, seed: int = 0) -> List[float]:
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, float), np.asarray(y, float)
    taus = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        taus.append(_kendall(x[idx], y[idx]))
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return [round(float(lo), 3), round(float(hi), 3)]


def _partial_tau(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Kendall's partial tau of x and y given z (Kendall 1942): what x ranks beyond what z already does."""
    txy, txz, tyz = _kendall(x, y), _kendall(x, z), _kendall(y, z)
    denom = math.sqrt(max(1e-12, (1 - txz ** 2) * (1 - tyz ** 2)))
    return (txy - txz * tyz) / denom


def _top_precision(x: Sequence[float], y: Sequence[float], frac: float = 0.25) -> float:
    k = max(1, round(len(x) * frac))
    top = lambda v: set(sorted(range(len(v)), key=lambda i: -v[i])[:k])  # noqa: E731
    return len(top(x) & top(y)) / k


def _ranks(v: Sequence[float]) -> List[float]:
    from scipy.stats import rankdata

    return list(rankdata(v))


def _collect(out: Path) -> List[dict]:
    """Every finished unit's record in ``runs.jsonl``."""
    rows = []
    for line in (Path(out) / RUNS_FILE).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _signal_table(plan: FidelityPlan, runs: List[dict], indices: Sequence[int], sides: Sequence[int]) -> Tuple[dict, dict, dict]:
    """Per spec index: the reference runs, the signals (oriented so that higher predicts better) and costs."""
    cap = plan.train.max_depth
    by = {}
    for r in runs:
        by[(r["kind"], r["index"], r.get("steps"), r.get("seed"), r.get("resolution"), r.get("max_depth"))] = r
    ref, sig, cost = {}, {}, {}
    for i in indices:
        res = sides[i]
        longs = [by.get(("train", i, plan.long_steps, s, res, cap)) for s in plan.reference_seeds]
        if any(x is None for x in longs):
            continue
        ref[i] = [x["result"]["val_top1"] for x in longs]
        s, c = {}, {}
        zc = by.get(("zero_cost", i, None, plan.signal_seed, None, None))
        cpu = by.get(("cpu_cost", i, None, None, res, cap))
        if zc is not None:
            z = zc["result"]
            for name in ZERO_COST_NAMES:
                s[name], c[name] = z[name], z[f"{name}_seconds"]
            s["params"], s["macs"] = z["params"], z["macs"]
            c["params"] = c["macs"] = z["complexity_seconds"]
        for b in plan.short_steps:
            short = by.get(("train", i, b, plan.signal_seed, res, cap))
            if short is None:
                continue
            cpu_s = None if cpu is None else cpu["result"]["cpu_fixed_s"] + b * cpu["result"]["cpu_s_per_step"]
            s[f"train_top1@{b}"] = short["result"]["val_top1"]
            s[f"train_loss_sum@{b}"] = -short["result"]["loss_sum"]  # lower loss sum predicts better
            for name in (f"train_top1@{b}", f"train_loss_sum@{b}"):
                c[name] = cpu_s if cpu_s is not None else short["result"]["seconds"]
        sig[i], cost[i] = s, c
    return ref, sig, cost


#: The rank ensemble, fixed before any result was seen: mean rank of the free signals a search always has
#: plus the cheapest training signal.
ENSEMBLE = ("synflow", "params", "train_loss_sum@{b0}")


#: The fewest specs a rank correlation is reported for.
_MIN_RANKED = 3


def _evaluate(plan, ref: dict, sig: dict, cost: dict) -> Tuple[dict, List[int]]:
    common = [i for i in ref if sig.get(i)]
    if len(common) < _MIN_RANKED:  # tau over one or two specs is 0 or +-1 whatever the signal: no score
        return {}, common
    names = sorted({n for i in common for n in sig[i]}, key=lambda n: (n.split("@")[0], int(n.split("@")[1]) if "@" in n else 0))
    names = [n for n in names if all(n in sig[i] for i in common)]
    target = [statistics.fmean(ref[i]) for i in common]
    params = [sig[i].get("params", 0.0) for i in common]
    macs = [sig[i].get("macs", 0.0) for i in common]
    ens_parts = [p.format(b0=min(plan.short_steps)) for p in ENSEMBLE]
    values = {n: [sig[i][n] for i in common] for n in names}
    if all(p in values for p in ens_parts):
        rank_lists = [_ranks(values[p]) for p in ens_parts]
        values["ensemble"] = [statistics.fmean(r[j] for r in rank_lists) for j in range(len(common))]
        for i in common:
            cost[i]["ensemble"] = sum(cost[i].get(p, 0.0) for p in ens_parts)
    out = {}
    for n, v in values.items():
        costs = [cost[i][n] for i in common if cost[i].get(n) is not None]
        out[n] = {
            "tau": round(_kendall(v, target), 3), "tau_ci": _bootstrap_tau(v, target), "rho": round(_spearman(v, target), 3),
            "tau_partial_params": round(_partial_tau(v, target, params), 3) if n != "params" else 0.0,
            # A search that already minimises MACs gains from a signal only what it ranks beyond MACs.
            "tau_partial_macs": round(_partial_tau(v, target, macs), 3) if n != "macs" else 0.0,
            "top_quarter_precision": round(_top_precision(v, target), 3),
            "cost_s": round(statistics.median(costs), 3) if costs else None,
        }
    return out, common


def analyse(out: Path, *, command: str = "") -> dict:
    """Statistics of every signal, the noise ceiling, the choice and its hold-out check -> ``fidelity.json``."""
    out = Path(out)
    plan, specs = load_specs(out)
    resolutions = load_resolutions(out)
    sides = _sides(plan, None if resolutions[0] is None else resolutions, len(specs))
    runs = _collect(out)
    main_idx, hold_idx = range(plan.n), range(plan.n, plan.n + plan.n_holdout)
    ref, sig, cost = _signal_table(plan, runs, main_idx, sides)
    signals, common = _evaluate(plan, ref, sig, cost)
    seeds = list(zip(*[ref[i] for i in common])) if common else [[], []]
    ranked = len(common) >= _MIN_RANKED
    ceiling = round(_kendall(seeds[0], seeds[1]), 3) if ranked else float("nan")
    bar = round(min(0.6, 0.8 * ceiling), 3)
    passing = sorted((v["cost_s"], n) for n, v in signals.items() if v["tau"] >= bar and v["cost_s"] is not None)
    best = max(signals, key=lambda n: signals[n]["tau"]) if signals else None
    chosen_name = passing[0][1] if passing else best
    h_ref, h_sig, h_cost = _signal_table(plan, runs, hold_idx, sides)
    h_signals, h_common = _evaluate(plan, h_ref, h_sig, h_cost) if h_ref else ({}, [])
    chosen = {"name": chosen_name, "passed_bar": bool(passing), "bar": bar, "tau": signals.get(chosen_name, {}).get("tau"),
              "tau_holdout": h_signals.get(chosen_name, {}).get("tau"), "tau_holdout_ci": h_signals.get(chosen_name, {}).get("tau_ci"),
              "n_holdout": len(h_common)}
    if len(h_common) >= _MIN_RANKED:
        h_seeds = list(zip(*[h_ref[i] for i in h_common]))
        chosen["noise_ceiling_holdout"] = round(_kendall(h_seeds[0], h_seeds[1]), 3)
        # A confirmation needs every hold-out spec: on a few, tau's interval spans almost [-1, 1].
        chosen["holdout_passed"] = (len(h_common) == plan.n_holdout and chosen["tau_holdout"] is not None
                                    and chosen["tau_holdout"] >= bar)
    curve = _learning_curves(plan, runs, common, sides)
    result = {
        "plan": plan.to_dict(), "command": command, "space": plan.space,
        "specs": [{"index": i, "spec_hash": specs[i].spec_hash, "arch": specs[i].code, "resolution": resolutions[i],
                   "input_side": sides[i], "reference_top1": ref[i], "signals": sig[i]} for i in common],
        "n_specs": len(common), "noise_ceiling_tau": ceiling, "noise_ceiling_ci": _bootstrap_tau(*seeds) if ranked else None,
        "reference_top1_range": [round(min(statistics.fmean(ref[i]) for i in common), 4),
                                 round(max(statistics.fmean(ref[i]) for i in common), 4)] if common else None,
        "resolution_range": ([min(resolutions[i] for i in common), max(resolutions[i] for i in common)]
                             if common and resolutions[0] is not None else None),
        "input_side_range": [min(sides[i] for i in common), max(sides[i] for i in common)] if common else None,
        "learning_curves": curve,
        "signals": signals, "signals_holdout": h_signals, "chosen": chosen,
        "scaling": _scaling_subset(plan, runs),
        "devices": sorted({r["device"] for r in runs}),
        "units": len(runs),
        "units_planned": len(plan_units(plan, specs, resolutions=None if resolutions[0] is None else resolutions)),
        "complete": len(common) == plan.n and len(h_common) == plan.n_holdout,
    }
    (out / "fidelity.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def _learning_curves(plan: FidelityPlan, runs: List[dict], common: Sequence[int], sides: Sequence[int]) -> dict:
    """Mean validation top-1 of the reference runs at each validation step: has training flattened?"""
    cap = plan.train.max_depth
    per_step: Dict[int, List[float]] = {}
    for r in runs:
        if (r["kind"] == "train" and r["steps"] == plan.long_steps and r["index"] in common
                and r["resolution"] == sides[r["index"]] and r["max_depth"] == cap):
            for h in r["result"]["history"]:
                per_step.setdefault(h["step"], []).append(h["val_top1"])
    return {str(k): round(statistics.fmean(v), 4) for k, v in sorted(per_step.items())}


def _scaling_subset(plan: FidelityPlan, runs: List[dict]) -> dict:
    """Per scaling: seed-to-seed tau, spread of top-1, tie count, and tau against the plan's own scaling."""
    table: Dict[Tuple[int, Optional[int]], Dict[int, Dict[int, float]]] = {}
    hashes: Dict[Tuple[int, Optional[int]], Dict[int, str]] = {}
    for r in runs:
        if r["kind"] == "train" and r["steps"] == plan.long_steps and r["index"] < plan.n_scaling:
            key = (r["resolution"], r["max_depth"])
            table.setdefault(key, {}).setdefault(r["index"], {})[r["seed"]] = r["result"]["val_top1"]
            hashes.setdefault(key, {})[r["index"]] = r["result"]["trained_spec_hash"]
    own = (plan.train.resolution, plan.train.max_depth)
    out = {}
    for key in plan.scalings:
        rows = {i: v for i, v in table.get(tuple(key), {}).items() if len(v) == 2}
        if len(rows) < 4:
            continue
        idx = sorted(rows)
        a, b = [rows[i][plan.reference_seeds[0]] for i in idx], [rows[i][plan.reference_seeds[1]] for i in idx]
        mean = [(x + y) / 2 for x, y in zip(a, b)]
        entry = {"n": len(idx), "seed_tau": round(_kendall(a, b), 3), "top1_min": round(min(mean), 4), "top1_max": round(max(mean), 4),
                 "distinct_trained_copies": len(set(hashes[tuple(key)][i] for i in idx))}
        own_rows = table.get(own, {})
        shared = [i for i in idx if len(own_rows.get(i, {})) == 2]
        if tuple(key) != own and len(shared) >= 4:
            entry["tau_vs_plan_scaling"] = round(_kendall([statistics.fmean(rows[i].values()) for i in shared],
                                                          [statistics.fmean(own_rows[i].values()) for i in shared]), 3)
        out[f"{key[0]}px_cap{key[1]}"] = entry
    return out


# --- report ------------------------------------------------------------------------------------------

def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def plot_tau_vs_cost(result: dict, path: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sig = {n: v for n, v in result["signals"].items() if v.get("cost_s")}
    if not sig:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for n, v in sig.items():
        lo, hi = v["tau_ci"]
        ax.errorbar(v["cost_s"], v["tau"], yerr=[[v["tau"] - lo], [hi - v["tau"]]], fmt="o", capsize=3,
                    color="C3" if n == result["chosen"]["name"] else "C0")
        ax.annotate(n, (v["cost_s"], v["tau"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ceiling = result["noise_ceiling_tau"]
    ax.axhline(ceiling, color="C2", ls="--", lw=1, label=f"noise ceiling (seed vs seed) {ceiling:.2f}")
    ax.axhline(result["chosen"]["bar"], color="C1", ls=":", lw=1, label=f"bar min(0.6, 0.8 x ceiling) = {result['chosen']['bar']:.2f}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("cost per spec (s, CPU of the search machine; log)")
    ax.set_ylabel("Kendall tau vs long-training top-1")
    ax.set_title(f"proxy fidelity: {result['n_specs']} specs of {Path(result['space']).stem}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_DATA_WORDS = {
    "fashion-mnist": "real Fashion-MNIST photos, 10 classes, chance 0.10",
    "fashion-mnist-canvas": "Fashion-MNIST photos small on a cluttered canvas, 10 classes, chance 0.10",
    "digits": "scanned digits small on a cluttered canvas, 10 classes, chance 0.10",
    "glyphs": "the digit among letters in vector fonts, a scene in fractions of the side; 10 classes, chance 0.10; "
              "validation fonts held out",
}


def _macs_words(plan: dict) -> str:
    return f"{plan['macs_resolution']} px" if plan.get("macs_resolution") else "each spec's own sampled resolution"


def write_report(result: dict, out: Path) -> Path:
    out = Path(out)
    plan = result["plan"]
    t = plan["train"]
    ch = result["chosen"]
    png = plot_tau_vs_cost(result, out / "tau_vs_cost.png")
    lines = [
        f"# Proxy fidelity on `{result['space']}` ({result['n_specs']} specs + {ch['n_holdout']} held out)\n",
        f"Regenerate: `{result['command']}`. Every finished unit is in `runs.jsonl` (a rerun resumes from it); "
        f"devices: {', '.join(result['devices'])}.\n",
        *([] if result["complete"] else [
            f"**Status: incomplete.** {result['n_specs']} of {plan['n']} specs and {ch['n_holdout']} of "
            f"{plan['n_holdout']} hold-out specs have both reference runs ({result['units']} of "
            f"{result['units_planned']} units finished); every figure below is on those specs only and the choice is "
            "preliminary. Rerun the command to continue: finished units are kept.\n"]),
        "## Set-up\n",
        f"* Data: `{t['data']}` ({_DATA_WORDS.get(t['data'], 'an ImageFolder')}), {t['train_size']} training and "
        f"{t['val_size']} validation images at " + (
            f"{t['resolution']} px." if result.get("resolution_range") is None else
            f"each spec's input side: its sampled resolution (range {result['resolution_range']}) times the side rule "
            f"(sides {result['input_side_range']} px)."),
        f"* Trained copy of each spec: widths x{t['width_mult']}, depth cap {t['max_depth']}, batch {t['batch_size']}, "
        f"AdamW lr {t['lr']} (one-cycle), weight decay {t['weight_decay']}.",
        f"* Reference: validation top-1 after {plan['long_steps']} steps, seeds {plan['reference_seeds'][0]} and "
        f"{plan['reference_seeds'][1]}; target = their mean. Mean top-1 over the validations of the reference runs "
        f"(does the curve flatten?): " + ", ".join(f"step {k}: {v:.3f}" for k, v in result["learning_curves"].items()) + ".",
        f"* Signals from a third seed ({plan['signal_seed']}), so that no signal shares a run with the reference: zero-cost "
        f"proxies on one real batch of 64 at init; params and MACs of the full spec (MACs at {_macs_words(plan)}); "
        f"`train_top1@B` and `train_loss_sum@B` (sum of the training losses, negated so higher is better) of a separate "
        f"B-step training (its own one-cycle schedule); `ensemble` = mean rank of {', '.join(ENSEMBLE).format(b0=min(plan['short_steps']))}"
        f" (fixed before any result was seen).",
        "* Cost per spec: median over specs, in seconds of this project's 2-core CPU (training: start-up plus B x the "
        "per-step time measured on that CPU for each spec; zero-cost: measured there).",
        f"* Reference top-1 range (mean of seeds): {result['reference_top1_range']}.\n",
        "## Noise ceiling and choice\n",
        f"* **Noise ceiling** (Kendall tau between the two reference seeds): **{_fmt(result['noise_ceiling_tau'])}** "
        f"(95% bootstrap {result['noise_ceiling_ci']}).",
        f"* Bar: min(0.6, 0.8 x ceiling) = {_fmt(ch['bar'])}.",
        (f"* **Chosen: `{ch['name']}`**, the cheapest signal at or above the bar (tau {_fmt(ch['tau'])})." if ch["passed_bar"] else
         f"* **No signal reached the bar.** The best was `{ch['name']}` (tau {_fmt(ch['tau'])}); the shipped searches use it."
         if ch["name"] is not None else
         f"* **No signal scored yet**: a rank correlation needs at least {_MIN_RANKED} specs with both references."),
        f"* Hold-out check on {ch['n_holdout']} specs not used to choose: tau {_fmt(ch['tau_holdout'])} "
        f"(95% bootstrap {ch.get('tau_holdout_ci')}), hold-out noise ceiling {_fmt(ch.get('noise_ceiling_holdout'))}; "
        + ("reaches the bar." if ch.get("holdout_passed") else
           f"**not yet a confirmation**: {ch['n_holdout']} of {plan['n_holdout']} hold-out specs have their references."
           if ch["n_holdout"] < plan["n_holdout"] else "does **not** reach the bar."),
        "* The ceiling compares one seed with the other; signals are scored against the mean of both seeds, which "
        "is less noisy than either, so a signal can score above the ceiling.",
        "\n## Every signal\n",
        f"Scored on the {result['n_specs']} main specs; the last column scores the same signal on the "
        f"{ch['n_holdout']} hold-out specs (not used to choose; with so few specs its interval is wide).\n",
        "| signal | tau | 95% CI | rho | tau, params partialled out | tau, MACs partialled out | top-quarter precision "
        "| CPU cost per spec (s) | hold-out tau [95% CI] |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for n, v in result["signals"].items():
        h = result.get("signals_holdout", {}).get(n)
        held = f"{_fmt(h['tau'])} [{h['tau_ci'][0]:.2f}, {h['tau_ci'][1]:.2f}]" if h and h.get("tau") is not None else "-"
        lines.append(f"| {n} | {_fmt(v['tau'])} | [{v['tau_ci'][0]:.2f}, {v['tau_ci'][1]:.2f}] | {_fmt(v['rho'])} | "
                     f"{_fmt(v['tau_partial_params'])} | {_fmt(v.get('tau_partial_macs'))} | {_fmt(v['top_quarter_precision'], 2)} "
                     f"| {_fmt(v['cost_s'], 2)} | {held} |")
    if png:
        lines += ["", f"![tau against cost]({png.name})"]
    if result["scaling"]:
        lines += ["\n## Scaling subset\n",
                  f"The first {plan['n_scaling']} specs, trained {plan['long_steps']} steps with both reference seeds at each "
                  "(resolution, depth cap). `distinct` counts different trained copies (a depth cap makes specs that differ "
                  "only in deep stages identical). The plan's own scaling, used for the references, the signals and the "
                  f"library defaults, is {t['resolution']} px with depth cap {t['max_depth']}.\n",
                  "| scaling | specs | distinct | seed-vs-seed tau | top-1 range | tau vs the plan's scaling |",
                  "| --- | ---: | ---: | ---: | --- | ---: |"]
        for k, v in result["scaling"].items():
            lines.append(f"| {k} | {v['n']} | {v['distinct_trained_copies']} | {_fmt(v['seed_tau'])} | "
                         f"{v['top1_min']:.3f}-{v['top1_max']:.3f} | {_fmt(v.get('tau_vs_plan_scaling'))} |")
    lines += ["\n## Specs\n", "| # | arch | top-1 seed A | top-1 seed B |", "| ---: | --- | ---: | ---: |"]
    for s in result["specs"]:
        lines.append(f"| {s['index']} | `{s['arch']}` | {s['reference_top1'][0]:.3f} | {s['reference_top1'][1]:.3f} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _check_study_dir(out: Path) -> None:
    """``out`` holds this study (resume), or nothing yet; never a file, a system path, or a user's own files."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / SPECS_FILE).exists():
        present = sorted(p.name for p in out.iterdir())[:3]
        raise ConfigError("--out", f"{out} holds files that are no fidelity study's ({', '.join(present)}); "
                                   "choose an empty directory (a study's own directory resumes it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError("--out", f"cannot write in {out}: {e.strerror or type(e).__name__}") from None


def run_study(
    plan: FidelityPlan,
    out: Path,
    *,
    command: str = "",
    kinds: Sequence[str] = ("train", "zero_cost", "cpu_cost"),
    accelerator: str = "cpu",
    workers: int = 1,
    data_root: Optional[str] = None,
    deadline_s: Optional[float] = None,
    analyse_only: bool = False,
    progress: Optional[Callable[[UnitEvent], None]] = None,
) -> dict:
    """Run the study's missing units of ``kinds`` (resuming ``out``), then analyse and write the report.

    ``progress(event)`` is called after every finished (or failed: ``event.error``) unit.
    """
    out = Path(out)
    if not analyse_only:
        _check_study_dir(out)
        specs = write_specs(plan, out)
        resolutions = load_resolutions(out)
        units = plan_units(plan, specs, kinds=kinds, resolutions=None if resolutions[0] is None else resolutions)
        total = len(units) - len(done_ids(out) & {u["id"] for u in units})
        start, done = time.perf_counter(), [0]

        def report(rec: dict) -> None:
            done[0] += 1
            if progress:
                progress(UnitEvent(done[0], total, rec["id"], time.perf_counter() - start, rec.get("error", "")))

        run_units(out, units, accelerator=accelerator, workers=workers, data_root=data_root, deadline_s=deadline_s,
                  progress=report)
    if not (out / RUNS_FILE).exists():
        raise ConfigError("--out", f"{out / RUNS_FILE}: no finished units to analyse")
    result = analyse(out, command=command)
    result["report"] = str(write_report(result, out))
    return result
