"""How well do the cheap proxies rank architectures the way longer training does?

For N specs sampled from a space: every zero-cost proxy and the short-training proxy, then a longer
training (``factor`` times the short budget) as the reference. Reports Kendall tau and Spearman rho of
each proxy against the longer-trained validation top-1, and each proxy's cost per spec. All scores are
taken on the same scaled-down copy of each spec (the scaling rule is in the report).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from ..space import SearchSpace, draw
from .train import TrainProxyConfig, train_proxy
from .zero_cost import PROXIES, ProxyConfig, score_proxy

__all__ = ["proxy_fidelity", "write_fidelity_report"]


def proxy_fidelity(
    space: SearchSpace,
    n: int,
    *,
    seed: int = 0,
    train: Optional[TrainProxyConfig] = None,
    factor: int = 4,
    progress: Optional[Callable[[str], None]] = None,
) -> dict:
    from scipy.stats import kendalltau, spearmanr

    short = train or TrainProxyConfig(max_depth=None)
    long = dataclasses.replace(short, steps=short.steps * factor, val_every=short.steps * factor)
    zc = ProxyConfig(width_mult=short.width_mult, max_depth=short.max_depth, round_to=short.round_to,
                     resolution=short.resolution, batch_size=16, seed=short.seed)
    candidates, _ = draw(space, n, seed=seed)
    rows = []
    start = time.perf_counter()
    for i, c in enumerate(candidates):
        row: Dict[str, object] = {"arch": c.spec.code, "spec_hash": c.spec.spec_hash}
        cost: Dict[str, float] = {}
        for name in PROXIES:
            s = score_proxy(c.spec, name, zc)
            row[name], cost[name] = s.score, s.seconds
        r = train_proxy(c.spec, short)
        row["train_short"], cost["train_short"] = r.val_top1, r.seconds
        r = train_proxy(c.spec, long)
        row["train_long"], cost["train_long"] = r.val_top1, r.seconds
        row["cost_s"] = cost
        rows.append(row)
        if progress:
            progress(f"{i + 1}/{n} {c.spec.code}: short {row['train_short']:.3f} long {row['train_long']:.3f}")
    target = [float(r["train_long"]) for r in rows]
    summary = {}
    for name in [*PROXIES, "train_short"]:
        xs = [float(r[name]) for r in rows]
        tau, p_tau = kendalltau(xs, target)
        rho, p_rho = spearmanr(xs, target)
        summary[name] = {"kendall_tau": float(tau), "p_tau": float(p_tau), "spearman_rho": float(rho), "p_rho": float(p_rho),
                         "median_cost_s": statistics.median(float(r["cost_s"][name]) for r in rows)}
    return {
        "space": space.name, "n": n, "seed": seed, "factor": factor, "rows": rows, "summary": summary,
        "short": dataclasses.asdict(short), "long": dataclasses.asdict(long), "zero_cost": dataclasses.asdict(zc),
        "reference_median_cost_s": statistics.median(float(r["cost_s"]["train_long"]) for r in rows),
        "seconds": round(time.perf_counter() - start, 1),
        "chance_top1": 0.1,
    }


def write_fidelity_report(result: dict, out: Path, command: str) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    s, sh, lg = result["summary"], result["short"], result["long"]
    md = [
        f"# Proxy fidelity on `{result['space']}` ({result['n']} specs, seed {result['seed']})\n",
        f"Regenerate: `{command}` ({result['seconds']:.0f} s here).\n",
        f"Reference: validation top-1 after {lg['steps']} steps of training ({result['factor']}x the short budget) on the "
        f"built-in digit-canvas task ({sh['resolution']} px canvas, {sh['digit_px']} px digits; chance 10%). Every score is "
        f"taken on the same scaled copy of each spec: widths x{sh['width_mult']}, depth cap {sh['max_depth']}, "
        f"batch {sh['batch_size']}, seed {sh['seed']}.\n",
        "| proxy | Kendall tau | p | Spearman rho | p | median cost per spec (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in s.items():
        md.append(f"| {name} | {v['kendall_tau']:.3f} | {v['p_tau']:.3f} | {v['spearman_rho']:.3f} | {v['p_rho']:.3f} | "
                  f"{v['median_cost_s']:.2f} |")
    md += [f"| (reference: train_long) | 1 | | 1 | | {result['reference_median_cost_s']:.2f} |", "",
           "| arch | " + " | ".join(s) + " | train_long |", "| --- |" + " ---: |" * (len(s) + 1)]
    for r in result["rows"]:
        md.append(f"| {r['arch']} | " + " | ".join(f"{float(r[k]):.4g}" for k in s) + f" | {float(r['train_long']):.3f} |")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path
