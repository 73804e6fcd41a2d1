"""What a rung costs besides its training steps, before and after one-run-per-trial rungs.

Before (sessions 7-8), every rung was a fresh training call: data, model build, Lightning set-up, full
validation (and a checkpoint reload and save, not counted here). Now a trial is one run and a rung
boundary costs a subset validation and a checkpoint write, timed inside the run (``boundary_s`` in each
boundary's signals). Measured on one spec, one thread:

* before: the wall-clock of a fresh 1-step training call, minus one step (the rung run's mean step time);
* now: the median ``boundary_s`` over the boundaries of --repeats rung runs.

    python benchmarks/bench_rung_cost.py --repeats 3
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    import torch

    from archsearch.options import TrainProxyConfig
    from archsearch.proxy.train import RungHook, train_proxy
    from archsearch.references import get_reference

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="fastvithd")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--side", type=int, default=64, help="training input side (the multi-fidelity benchmark's 64 px)")
    p.add_argument("--rungs", default="20,60,180")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rung_cost")
    args = p.parse_args()
    import _common

    torch.set_num_threads(1)
    rungs = [int(x) for x in args.rungs.split(",")]
    spec = get_reference(args.spec).spec
    base = TrainProxyConfig(data=args.data, resolution=args.side, batch_size=32, train_size=4000, val_size=500)
    fresh, boundary, step = [], [], []
    train_proxy(spec, dataclasses.replace(base, steps=1))  # warm: imports, data decoded once into the OS cache
    for r in range(args.repeats):
        start = time.perf_counter()
        train_proxy(spec, dataclasses.replace(base, steps=1))
        fresh.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            hook = RungHook(rungs, lambda _i, _s: True, val_subset=256, checkpoint=Path(tmp) / "run.ckpt")
            result = train_proxy(spec, dataclasses.replace(base, steps=rungs[-1]), rungs=hook)
        costs = [b["boundary_s"] for b in result.boundaries]
        boundary += costs
        step.append((result.seconds - sum(costs)) / rungs[-1])
        print(f"round {r}: fresh 1-step call {fresh[-1]:.2f} s, boundaries {[round(c, 2) for c in costs]} s, "
              f"step {step[-1]:.3f} s", flush=True)
    per_step = statistics.median(step)
    before = statistics.median(fresh) - per_step
    now = statistics.median(boundary)
    summary = {"spec": args.spec, "data": args.data, "input_side": args.side, "rungs": rungs, "per_step_s": round(per_step, 4),
               "fixed_cost_per_rung_before_s": round(before, 3), "cost_per_boundary_now_s": round(now, 3),
               "fresh_call_s": fresh, "boundary_s": boundary, "step_s": step}
    first = rungs[0]
    before_row = ("| **before**: fixed cost of each rung, at least (a fresh training call: data, build, Lightning, full "
                  "validation; not its checkpoint reload and save)")
    full = rungs[-1] * per_step + before
    share_before, share_now = (first * per_step + before) / full, (first * per_step + now) / full
    md = f"""# What a rung costs besides its steps

{args.spec} (quarter width, depth cap 4) on {args.data} at {args.side} px, batch 32, 4000 training / 500 validation
images (the multi-fidelity benchmark's training), one thread, {args.repeats} rounds, medians.

| | seconds |
| --- | --- |
| one training step (in the rung runs) | {per_step:.3f} |
{before_row} | **{before:.2f}** |
| **now**: cost of a rung boundary (top-1 on 256 validation images, checkpoint write), timed inside the run | **{now:.2f}** |

A {first}-step first rung cost {first * per_step + before:.1f} s before ({share_before:.0%} of a
{rungs[-1]}-step training) and {first * per_step + now:.1f} s now ({share_now:.0%}); rungs {rungs}.
"""
    _common.RESULTS = args.out.parent
    _common.write(args.out.name, {"stamp": _common.stamp(), "summary": summary}, md)


if __name__ == "__main__":
    main()
