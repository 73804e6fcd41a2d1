"""Sampler comparison on the quickstart objectives: hypervolume after N trials, per sampler and seed.

Every objective is normalised to [0, 1] with the minimum and maximum seen over all runs (maximised
objectives flipped), and the hypervolume is taken against the reference point (1.1, ..., 1.1), so the
numbers of all runs are comparable. Each run is a separate in-memory study (no MLflow).

    python benchmarks/bench_samplers.py [--trials 50] [--seeds 0 1 2] [--samplers nsga2 tpe random]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import stamp, write  # noqa: E402

from optuna._hypervolume import compute_hypervolume  # noqa: E402  (Optuna's WFG; no public equivalent)
from optuna.trial import TrialState  # noqa: E402

from archsearch.search import SearchRunner  # noqa: E402
from archsearch.trials import load_trials  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samplers", nargs="+", default=["nsga2", "tpe", "random"])
    args = ap.parse_args()
    runs = {}
    start = time.perf_counter()
    for sampler in args.samplers:
        for seed in args.seeds:
            cfg = load_trials(ROOT / "trials" / "quickstart.yaml", [
                f"study_name=bench-{sampler}-{seed}", "storage=memory", "tracking.enabled=false",
                f"sampler.name={sampler}", f"sampler.seed={seed}", f"n_trials={args.trials}", "enqueue=[]",
            ])
            t0 = time.perf_counter()
            study = SearchRunner(cfg, warn=lambda _m: None).run().study
            done = study.get_trials(states=(TrialState.COMPLETE,))
            feasible = [t for t in done if t.user_attrs["metrics"]["tokens"] <= 64]
            runs[(sampler, seed)] = {"values": [t.values for t in (feasible or done)], "n_complete": len(done),
                                     "n_feasible": len(feasible), "seconds": time.perf_counter() - t0}
            print(sampler, seed, len(done), "complete", len(feasible), "feasible", f"{runs[(sampler, seed)]['seconds']:.0f} s",
                  flush=True)
    directions = [o.direction for o in cfg.objectives]
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    allv = np.array([v for r in runs.values() for v in r["values"]]) * sign
    lo, hi = allv.min(axis=0), allv.max(axis=0)
    scale = np.where(hi > lo, hi - lo, 1.0)
    hv = {}
    for key, r in runs.items():
        pts = (np.array(r["values"]) * sign - lo) / scale
        hv[key] = float(compute_hypervolume(pts, np.full(pts.shape[1], 1.1))) if len(pts) else 0.0
    names = [o.name for o in cfg.objectives]
    md = [f"### Sampler comparison: hypervolume after {args.trials} trials on the quickstart objectives\n",
          f"Objectives: {', '.join(f'{n} ({d})' for n, d in zip(names, directions))}; constraint tokens <= 64; "
          f"normalised to [0, 1] over all runs, reference point 1.1 (max {1.1 ** len(names):.3f}). "
          f"Feasible complete trials only. {time.perf_counter() - start:.0f} s in all.\n",
          "| sampler | " + " | ".join(f"seed {s}" for s in args.seeds) + " | median |",
          "| --- |" + " ---: |" * (len(args.seeds) + 1)]
    for sampler in args.samplers:
        vals = [hv[(sampler, s)] for s in args.seeds]
        md.append(f"| {sampler} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {statistics.median(vals):.4f} |")
    write(f"samplers_{args.trials}", {"stamp": stamp(), "hypervolume": {f"{k[0]}/{k[1]}": v for k, v in hv.items()},
                                       "runs": {f"{k[0]}/{k[1]}": r for k, r in runs.items()}}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
