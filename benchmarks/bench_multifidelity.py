"""Rung search vs plain search at equal wall-clock: hypervolume of each final front, re-evaluated at the
full training budget.

The same experiment runs twice per seed: with its ``fidelity:`` rungs, and without them (every trial trains
the last rung's steps). Each run gets ``--budget-s`` seconds (``timeout_s``), an in-memory study and a
private measurement cache (no run is served another's measurements) that starts from one latency table
calibrated before the first run (the predictor fit is paid once, outside every budget). Every member of each final Pareto
front is then re-measured with a plain training of the full budget, so both fronts are judged alike; the
objectives are normalised over all re-evaluated points of that seed and the hypervolume is taken against
(1.1, ..., 1.1). Each finished (seed, mode) is appended to ``--log`` so that an interrupted benchmark
resumes.

    python benchmarks/bench_multifidelity.py [--trials-file trials/quickstart_rungs.yaml] [--budget-s 1800]
        [--seeds 0 1 2] [KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, stamp, write  # noqa: E402

from optuna._hypervolume import compute_hypervolume  # noqa: E402  (Optuna's WFG; no public equivalent)

from archsearch.metrics import Measurer  # noqa: E402
from archsearch.pareto import pareto_rows  # noqa: E402
from archsearch.search import SearchRunner  # noqa: E402
from archsearch.trials import load_trials  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def calibrate(trials_file: str, overrides: list, into: Path) -> None:
    """Fit the latency predictor once (its block table and whole-model fit) into ``into``; every run starts
    from a copy of it, so no run's budget pays for calibration and all price on the same table."""
    if (into / "latency_lut").exists():
        return
    cfg = load_trials(trials_file, [*overrides, "study_name=bench-calibrate", "storage=memory",
                                    "tracking.enabled=false", "enqueue=[]"])
    os.environ["ARCHSEARCH_CACHE_DIR"] = str(into)
    SearchRunner(cfg, warn=lambda m: print(m, flush=True)).prepare()


def run_one(trials_file: str, overrides: list, seed: int, mode: str, budget_s: float, lut: Path) -> dict:
    base = load_trials(trials_file, overrides)
    if base.fidelity is None:
        raise SystemExit(f"{trials_file} has no fidelity: section")
    full = base.fidelity.rungs[-1]
    extra = [f"study_name=bench-{mode}-{seed}", "storage=memory", "tracking.enabled=false", f"sampler.seed={seed}",
             f"timeout_s={budget_s}", "n_trials=100000", f"measure.train.steps={full}"]
    if mode == "plain":
        extra.append("fidelity=null")
    cfg = load_trials(trials_file, [*overrides, *extra])
    with tempfile.TemporaryDirectory() as cache:
        os.environ["ARCHSEARCH_CACHE_DIR"] = cache
        if (lut / "latency_lut").exists():
            shutil.copytree(lut / "latency_lut", Path(cache) / "latency_lut")
        t0 = time.perf_counter()
        runner = SearchRunner(cfg, warn=lambda _m: None)
        started = datetime.datetime.now()
        result = runner.finish(runner.run())
        wall = time.perf_counter() - t0
        completions = _completions(result.study, started)
        front = pareto_rows(result.study)
        # Re-evaluate the front with a plain full-budget training (the same measurer options).
        names = [o.name for o in cfg.objectives]
        measurer = Measurer(cfg.measure)
        values = [measurer.values(r.spec, r.resolution, names)[0] for r in front]
    import torch

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"seed": seed, "mode": mode, "budget_s": budget_s, "wall_s": round(wall, 1), "cores": cores,
            "torch_threads": torch.get_num_threads(), "states": result.states,
            "rungs": result.rungs, "front": [[v[n] for n in names] for v in values],
            "front_archs": [r.spec.code for r in front], "objectives": names, "completions": completions,
            "directions": [o.direction for o in cfg.objectives]}


def _completions(study, started: datetime.datetime) -> list:
    """[seconds since the run started, objective values] of every feasible full-budget (COMPLETE) trial, in the
    order they finished: the front at any moment of the run is the front of those finished by then. Their values
    are what the re-evaluation finds too (the same training, served from the run's cache)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        violations = [v for k, v in t.system_attrs.items() if k.startswith("constraints:")]  # Trial.set_constraint
        if t.datetime_complete is None or any(v > 0 for v in violations):
            continue
        out.append([round((t.datetime_complete - started).total_seconds(), 2), list(t.values)])
    return sorted(out)


def _hypervolume(points: np.ndarray) -> float:
    """Hypervolume of normalised points to minimise against (1.1, ...); points beyond the reference add nothing."""
    pts = points[(points < 1.1).all(axis=1)] if len(points) else points
    return float(compute_hypervolume(pts, np.full(points.shape[1], 1.1))) if len(pts) else 0.0


def _curves(done: dict, seeds: list, hv_norm: dict, grid: list) -> dict:
    """Each (seed, mode)'s hypervolume at each fraction of the budget (its completions' front by then)."""
    curves = {}
    for seed in seeds:
        sign, lo, scale = hv_norm[seed]
        for m in ("rungs", "plain"):
            rec = done[(seed, m)]
            if "completions" not in rec:
                continue
            by = []
            for f in grid:
                pts = [v for s, v in rec["completions"] if s <= f * rec["budget_s"]]
                by.append(_hypervolume((np.array(pts) * sign - lo) / scale) if pts else 0.0)
            curves[(seed, m)] = by
    return curves


def _read(log: Path) -> dict:
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill: that unit runs again
            done[(rec["seed"], rec["mode"])] = rec
    return done


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials-file", default=str(ROOT / "trials" / "quickstart_rungs.yaml"))
    ap.add_argument("--budget-s", type=float, default=1800.0, help="wall-clock seconds per run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--name", default="multifidelity")
    ap.add_argument("--log", default=None, help="finished units, one JSON line each (default results/NAME.jsonl)")
    ap.add_argument("--modes", nargs="+", choices=("rungs", "plain"), default=["rungs", "plain"],
                    help="run only these modes (two processes, one per mode, side by side on a 2-core machine see "
                         "the same conditions); the report is written once the log holds every (seed, mode)")
    ap.add_argument("--lut", default=None,
                    help="the calibrated latency table's folder, shared by processes run side by side (default: a "
                         "temporary one); calibrated on first use")
    return ap


def main() -> None:
    args, overrides = _parser().parse_known_args()
    log = Path(args.log or RESULTS / f"{args.name}.jsonl")
    done = _read(log)
    lut = Path(args.lut) if args.lut else Path(tempfile.mkdtemp(prefix="archsearch-bench-lut-"))
    for seed in args.seeds:
        for mode in args.modes:
            if (seed, mode) in done:
                continue
            calibrate(args.trials_file, overrides, lut)
            rec = run_one(args.trials_file, overrides, seed, mode, args.budget_s, lut)
            done[(seed, mode)] = rec
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            print(seed, mode, rec["wall_s"], "s", len(rec["front"]), "on the front", rec["states"], flush=True)
    if not args.lut:
        shutil.rmtree(lut, ignore_errors=True)
    done = _read(log)  # a process run side by side may have added the other mode meanwhile
    missing = [(s, m) for s in args.seeds for m in ("rungs", "plain") if (s, m) not in done]
    if missing:
        print(f"no report yet: {log} lacks {missing}", flush=True)
        return
    _report(args, overrides, done)


def _rung_cost_note() -> str:
    """The per-rung costs, before and after one-run rungs (``bench_rung_cost.py``'s result, measured apart)."""
    path = RESULTS / "rung_cost.json"
    if not path.exists():
        return "Per-rung costs: not measured yet (`python benchmarks/bench_rung_cost.py`)."
    c = json.loads(path.read_text())["summary"]
    return (f"Per-rung costs ([rung_cost.md](rung_cost.md), measured apart: {c['spec']} on {c['data']} at "
            f"{c['input_side']} px, one thread): a training step {c['per_step_s']:.2f} s; besides its steps a rung cost "
            f"at least {c['fixed_cost_per_rung_before_s']:.1f} s before one-run rungs (a fresh training call), a "
            f"boundary costs {c['cost_per_boundary_now_s']:.1f} s now; the zero-cost screen trains nothing.")


def _data(args: argparse.Namespace, overrides: list) -> str:
    """The accuracy task the runs trained on (the experiment's training data, overrides applied)."""
    return str(load_trials(args.trials_file, overrides).measure.train.data)


def _screen_note(rec: dict) -> str:
    rungs = (rec.get("rungs") or {}).get("rungs") or []
    return " (rung 0: the zero-cost screen, no training)" if rungs and rungs[0] == 0 else ""


def _plot(name: str, grid: list, curves: dict, med_curve: dict, budget_s: float) -> str:
    """Hypervolume against wall-clock, each seed thin and the median thick, per mode; the PNG's file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archsearch._outputs import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    secs = [f * budget_s for f in grid]
    for m, colour in (("rungs", "tab:blue"), ("plain", "tab:orange")):
        for (_, mode), ys in curves.items():
            if mode == m:
                ax.plot(secs, ys, color=colour, alpha=0.3, linewidth=1)
        ax.plot(secs, med_curve[m], color=colour, linewidth=2.5, label=f"{m} (median of seeds)")
    ax.set_xlabel("wall-clock (s)")
    ax.set_ylabel("hypervolume of the full-budget front")
    ax.legend()
    fig.tight_layout()
    file = f"{name}_hv.png"
    save_figure(fig, RESULTS / file)
    plt.close(fig)
    return file


def _report(args: argparse.Namespace, overrides: list, done: dict) -> None:
    """Hypervolume of every (seed, mode)'s final front and over its budget; the report and its JSON."""
    hv, norm = {}, {}
    for seed in args.seeds:
        recs = [done[(seed, m)] for m in ("rungs", "plain")]
        sign = np.array([1.0 if d == "minimize" else -1.0 for d in recs[0]["directions"]])
        pts_all = np.array([p for r in recs for p in r["front"]]) * sign
        lo, hi = pts_all.min(axis=0), pts_all.max(axis=0)
        scale = np.where(hi > lo, hi - lo, 1.0)
        norm[seed] = (sign, lo, scale)
        for r in recs:
            hv[(seed, r["mode"])] = _hypervolume((np.array(r["front"]) * sign - lo) / scale) if r["front"] else 0.0
    med = {m: statistics.median(hv[(s, m)] for s in args.seeds) for m in ("rungs", "plain")}
    grid = [round(0.05 * i, 2) for i in range(1, 21)]
    curves = _curves(done, args.seeds, norm, grid)
    complete_curves = all((s, m) in curves for s in args.seeds for m in ("rungs", "plain"))
    med_curve = {m: [statistics.median(curves[(s, m)][i] for s in args.seeds) for i in range(len(grid))]
                 for m in ("rungs", "plain")} if complete_curves else {}
    reach = next((f for f, v in zip(grid, med_curve.get("rungs", [])) if v >= med["plain"]), None)
    first_of = {m: done[(args.seeds[0], m)] for m in ("rungs", "plain")}
    first = first_of["rungs"]
    md = [f"### Multi-fidelity (rung) search vs plain search at {args.budget_s:.0f} s of wall clock each\n",
          f"Experiment `{Path(args.trials_file).name}` (overrides: {' '.join(overrides) or 'none'}); objectives "
          + ", ".join(f"{n} ({d})" for n, d in zip(first["objectives"], first["directions"]))
          + f"; rungs {first['rungs']['rungs'] if first.get('rungs') else '?'} steps{_screen_note(first)}. Fronts re-evaluated "
          f"at the full "
          "training budget, normalised per seed over both fronts, reference point 1.1. Conditions: "
          + "; ".join(f"{m}: cores {first_of[m].get('cores')}, {first_of[m].get('torch_threads')} torch thread(s)"
                      for m in ("rungs", "plain")) + ".\n",
          "| mode | " + " | ".join(f"seed {s}" for s in args.seeds) + " | median | trials finished (per seed) "
          "| of them full-budget |",
          "| --- |" + " ---: |" * (len(args.seeds) + 1) + " --- | --- |"]
    for m in ("rungs", "plain"):
        fin = [sum(v for k, v in done[(s, m)]["states"].items() if k in ("COMPLETE", "PRUNED")) for s in args.seeds]
        full = [done[(s, m)]["states"].get("COMPLETE", 0) for s in args.seeds]
        md.append(f"| {m} | " + " | ".join(f"{hv[(s, m)]:.4f}" for s in args.seeds) + f" | **{med[m]:.4f}** | {fin} | {full} |")
    md += ["", f"Accuracy task: `{_data(args, overrides)}`. What the rungs did per seed (stopped: trials stopped at each "
           "rung; steps saved: training steps not run, against every trial trained to the full budget):", "",
           "| seed | trials | stopped at each rung | full-budget | steps trained | steps saved |",
           "| ---: | ---: | --- | ---: | ---: | ---: |"]
    for s in args.seeds:
        r = done[(s, "rungs")].get("rungs") or {}
        md.append(f"| {s} | {r.get('trials', '?')} | {r.get('stopped_at', '?')} | {r.get('full_budget', '?')} | "
                  f"{r.get('steps_trained', '?')} | {100 * r.get('saved_fraction', 0):.0f}% |")
    md += ["", _rung_cost_note()]
    if med_curve:
        md += ["", "Median hypervolume over the seeds against the fraction of the budget spent (the front of the "
               "full-budget trials finished by then, normalised as above):", "",
               "| mode | " + " | ".join(f"{int(100 * f)}%" for f in grid[3::4]) + " |",
               "| --- |" + " ---: |" * len(grid[3::4])]
        for m in ("rungs", "plain"):
            md.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in med_curve[m][3::4]) + " |")
        md += ["", f"Rung search first reaches plain search's final median hypervolume ({med['plain']:.4f}) at "
               + (f"**{int(100 * reach)}%** of the budget." if reach is not None else "**no point of its budget**: it never "
                  "does."),
               "", f"![hypervolume against wall-clock]({_plot(args.name, grid, curves, med_curve, args.budget_s)})"]
    write(args.name, {"stamp": stamp(), "hypervolume": {f"{s}/{m}": v for (s, m), v in hv.items()}, "median": med,
                      "curve_fractions": grid, "median_curve": med_curve, "rungs_reach_plain_at": reach,
                      "runs": [done[(s, m)] for s in args.seeds for m in ("rungs", "plain")]}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
