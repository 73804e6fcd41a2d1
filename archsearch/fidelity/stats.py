"""The statistics of a fidelity study: every signal's rank correlation with long training, the noise ceiling,
bootstrap intervals, partial tau (params, MACs), the choice and its hold-out check -> ``fidelity.json``."""
from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, cast

from ..options import ZERO_COST_NAMES
from .plan import FidelityPlan, _read_runs, _sides, load_resolutions, load_specs, plan_units


_log = logging.getLogger("archsearch")


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
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    taus = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(xa), len(xa))
        taus.append(_kendall(xa[idx], ya[idx]))
    bounds: Any = np.percentile(taus, [2.5, 97.5])
    return [round(float(bounds[0]), 3), round(float(bounds[1]), 3)]


def _pooled_tau(x: Sequence[float], y: Sequence[float], groups: Sequence[object]) -> Optional[float]:
    """Kendall's tau-b over the pairs of items that share a group (one resolution, one token band): how well
    ``x`` orders what a search decides *within* a group, without the differences between groups."""
    import numpy as np

    xa, ya, ga = np.asarray(x, float), np.asarray(y, float), np.asarray([str(g) for g in groups])
    same = ga[:, None] == ga[None, :]
    upper = np.triu(np.ones_like(same, dtype=bool), k=1) & same
    sx, sy = np.sign(xa[:, None] - xa[None, :])[upper], np.sign(ya[:, None] - ya[None, :])[upper]
    denom = math.sqrt(float((sx ** 2).sum()) * float((sy ** 2).sum()))
    return None if denom == 0 else float((sx * sy).sum()) / denom


def _pooled_bootstrap(x: Sequence[float], y: Sequence[float], groups: Sequence[object], n_boot: int = 2000,
                      seed: int = 0) -> Optional[List[float]]:
    """95% interval of :func:`_pooled_tau`, resampling items within each group (the groups stay as they are)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    members: Dict[str, List[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    taus = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(m, len(m)) for m in members.values()])
        t = _pooled_tau(xa[idx], ya[idx], [groups[i] for i in idx])
        if t is not None:
            taus.append(t)
    if not taus:
        return None
    bounds: Any = np.percentile(taus, [2.5, 97.5])
    return [round(float(bounds[0]), 3), round(float(bounds[1]), 3)]


#: Top-1 of a guess: every data set a proxy trains on here has 10 classes.
CHANCE_TOP1 = 0.1


def token_band(tokens: int) -> int:
    """The token budget band of a spec: (4^(k-1), 4^k] visual tokens is band k (64, 256, 1024, 4096, ...)."""
    return max(0, math.ceil(math.log(max(1, tokens), 4) - 1e-9))


def _within_groups(v: Sequence[float], target: Sequence[float], groups: Mapping[str, Sequence[object]]) -> dict:
    out: Dict[str, Any] = {}
    for name, g in groups.items():
        t = _pooled_tau(v, target, g)
        out[f"tau_within_{name}"] = None if t is None else round(t, 3)
        out[f"tau_within_{name}_ci"] = _pooled_bootstrap(v, target, g)
    return out


def _at_chance_share(v: Sequence[float], target: Sequence[float], frac: float = 0.25) -> float:
    """Of the signal's top ``frac`` of specs, the share whose reference top-1 is within 0.05 of chance."""
    k = max(1, round(len(v) * frac))
    top = sorted(range(len(v)), key=lambda i: -v[i])[:k]
    return round(sum(target[i] <= CHANCE_TOP1 + 0.05 for i in top) / k, 3)


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
        ref[i] = [x["result"]["val_top1"] for x in longs if x is not None]
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


def _evaluate(plan, ref: dict, sig: dict, cost: dict, groups: Optional[Dict[str, dict]] = None) -> Tuple[dict, List[int]]:
    """Every signal's statistics over the specs with a reference; ``groups``: {group kind: {spec index: group}}
    (resolution, token band) for the within-group taus."""
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
    by_group = {kind: [g[i] for i in common] for kind, g in (groups or {}).items()}
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
            **_within_groups(v, target, by_group),
            "top_quarter_at_chance": _at_chance_share(v, target),
        }
    return out, common


def _groups(specs, resolutions: Sequence[Optional[int]]) -> Dict[str, dict]:
    """Each spec's resolution and token band (none for a study whose specs share one resolution)."""
    if not resolutions or resolutions[0] is None:
        return {}
    return {"resolution": dict(enumerate(resolutions)),
            "tokens": {i: token_band(s.visual_tokens(int(cast(int, r)))) for i, (s, r) in enumerate(zip(specs, resolutions))}}


def _ceilings(ref: dict, common: Sequence[int], groups: Dict[str, dict]) -> dict:
    """The reference seeds' own within-group taus (``noise_ceiling_within_resolution`` / ``_tokens``)."""
    if len(common) < _MIN_RANKED:
        return {}
    a, b = [ref[i][0] for i in common], [ref[i][1] for i in common]
    out: Dict[str, Any] = {}
    for kind, g in groups.items():
        t = _pooled_tau(a, b, [g[i] for i in common])
        out[f"noise_ceiling_within_{kind}"] = None if t is None else round(t, 3)
        out[f"noise_ceiling_within_{kind}_ci"] = _pooled_bootstrap(a, b, [g[i] for i in common])
    return out


def analyse(out: Path, *, command: str = "") -> dict:
    """Statistics of every signal, the noise ceiling, the choice and its hold-out check -> ``fidelity.json``."""
    out = Path(out)
    plan, specs = load_specs(out)
    resolutions = load_resolutions(out)
    sides = _sides(plan, None if resolutions[0] is None else resolutions, len(specs))
    runs, skipped = _read_runs(out)
    if skipped:
        _log.warning(f"{out / 'runs.jsonl'}: {len(skipped)} lines skipped ({'; '.join(skipped[:3])}"
                     f"{'; ...' if len(skipped) > 3 else ''}); their units run again on the next run")
    main_idx, hold_idx = range(plan.n), range(plan.n, plan.n + plan.n_holdout)
    ref, sig, cost = _signal_table(plan, runs, main_idx, sides)
    groups = _groups(specs, resolutions)
    signals, common = _evaluate(plan, ref, sig, cost, groups)
    seeds: List[Sequence[float]] = list(zip(*[ref[i] for i in common])) if common else [[], []]
    ranked = len(common) >= _MIN_RANKED
    ceiling = round(_kendall(seeds[0], seeds[1]), 3) if ranked else float("nan")
    bar = round(min(0.6, 0.8 * ceiling), 3)
    # Seeds that do not agree leave nothing to rank against: a bar under 0 would pass a signal that ranks backwards.
    judged = ranked and ceiling > 0
    passing = sorted((v["cost_s"], n) for n, v in signals.items() if judged and v["tau"] >= bar and v["cost_s"] is not None)
    best = max(signals, key=lambda n: signals[n]["tau"]) if signals and judged else None
    chosen_name = passing[0][1] if passing else best
    h_ref, h_sig, h_cost = _signal_table(plan, runs, hold_idx, sides)
    h_signals, h_common = _evaluate(plan, h_ref, h_sig, h_cost, groups) if h_ref else ({}, [])
    chosen = {"name": chosen_name, "passed_bar": bool(passing), "bar": bar, "judged": judged, "tau": signals.get(chosen_name,
                                                                                                                 {}).get("tau"),
              "tau_holdout": h_signals.get(chosen_name, {}).get("tau"), "tau_holdout_ci": h_signals.get(chosen_name,
                                                                                                        {}).get("tau_ci"),
              "n_holdout": len(h_common)}
    if len(h_common) >= _MIN_RANKED:
        h_seeds = list(zip(*[h_ref[i] for i in h_common]))
        chosen["noise_ceiling_holdout"] = round(_kendall(h_seeds[0], h_seeds[1]), 3)
        # A confirmation needs every hold-out spec: on a few, tau's interval spans almost [-1, 1].
        chosen["holdout_passed"] = (len(h_common) == plan.n_holdout and chosen["tau_holdout"] is not None
                                    and chosen["tau_holdout"] >= bar)
    ceilings = _ceilings(ref, common, groups)
    curve = _learning_curves(plan, runs, common, sides)
    result = {
        "plan": plan.to_dict(), "command": command, "space": plan.space,
        "specs": [{"index": i, "spec_hash": specs[i].spec_hash, "arch": specs[i].code, "resolution": resolutions[i],
                   "input_side": sides[i], "reference_top1": ref[i], "signals": sig[i]} for i in common],
        "n_specs": len(common), "noise_ceiling_tau": ceiling, **ceilings,
        "chance_top1": CHANCE_TOP1, "noise_ceiling_ci": _bootstrap_tau(seeds[0], seeds[1]) if ranked else None,
        "reference_top1_range": [round(min(statistics.fmean(ref[i]) for i in common), 4),
                                 round(max(statistics.fmean(ref[i]) for i in common), 4)] if common else None,
        "resolution_range": ([min(cast(int, resolutions[i]) for i in common), max(cast(int, resolutions[i]) for i in common)]
                             if common and resolutions[0] is not None else None),
        "input_side_range": [min(sides[i] for i in common), max(sides[i] for i in common)] if common else None,
        "learning_curves": curve,
        "signals": signals, "signals_holdout": h_signals, "chosen": chosen,
        "chosen_within_resolution": _choose_within(signals, ceilings.get("noise_ceiling_within_resolution")),
        "scaling": _scaling_subset(plan, runs),
        "devices": sorted({r["device"] for r in runs}),
        "units": len(runs), "skipped_lines": skipped,
        "units_planned": len(plan_units(plan, specs, resolutions=None if resolutions[0] is None else resolutions)),
        "complete": len(common) == plan.n and len(h_common) == plan.n_holdout,
    }
    (out / "fidelity.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def _choose_within(signals: dict, ceiling: Optional[float]) -> Optional[dict]:
    """The signal for a search that decides within one resolution: the cheapest whose pooled within-resolution
    tau reaches min(0.4, 0.8 x that ceiling) with the lower end of its interval above 0 (None: a study whose
    specs share one resolution)."""
    if ceiling is None:
        return None
    bar = round(min(0.4, 0.8 * ceiling), 3)
    ok = sorted((v["cost_s"], n) for n, v in signals.items()
                if v.get("tau_within_resolution") is not None and v["tau_within_resolution"] >= bar
                and v.get("tau_within_resolution_ci") and v["tau_within_resolution_ci"][0] > 0 and v["cost_s"] is not None)
    name = ok[0][1] if ok else None
    return {"name": name, "bar": bar, "passed_bar": bool(ok),
            "tau_within_resolution": signals[name]["tau_within_resolution"] if name else None,
            "tau_within_resolution_ci": signals[name]["tau_within_resolution_ci"] if name else None,
            "passing": [n for _, n in ok]}


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
    for scaling in plan.scalings:
        key = (scaling[0], scaling[1])
        rows = {i: v for i, v in table.get(key, {}).items() if len(v) == 2}
        if len(rows) < 4:
            continue
        idx = sorted(rows)
        a, b = [rows[i][plan.reference_seeds[0]] for i in idx], [rows[i][plan.reference_seeds[1]] for i in idx]
        mean = [(x + y) / 2 for x, y in zip(a, b)]
        entry = {"n": len(idx), "seed_tau": round(_kendall(a, b), 3), "top1_min": round(min(mean), 4),
                 "top1_max": round(max(mean), 4),
                 "distinct_trained_copies": len(set(hashes[key][i] for i in idx))}
        own_rows = table.get(own, {})
        shared = [i for i in idx if len(own_rows.get(i, {})) == 2]
        if key != own and len(shared) >= 4:
            entry["tau_vs_plan_scaling"] = round(_kendall([statistics.fmean(rows[i].values()) for i in shared],
                                                          [statistics.fmean(own_rows[i].values()) for i in shared]), 3)
        out[f"{key[0]}px_cap{key[1]}"] = entry
    return out
