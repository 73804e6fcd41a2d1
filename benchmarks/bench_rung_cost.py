"""What a rung costs besides its training steps, before and after one-run-per-trial rungs.

    python benchmarks/bench_rung_cost.py --repeats 2

Before (sessions 7-8), every rung was a fresh training call: data, model build, checkpoint reload, full
validation. Now a trial is one run and a rung boundary costs a subset validation (and a checkpoint
write for crash recovery). Measured on one spec, interleaved over --repeats rounds, one thread:

* per-step cost: (T(long) - T(short)) / (long - short) of plain fresh trainings;
* fixed cost of a fresh training call (what each rung paid before): T(short) - short x per-step;
* cost of a boundary now: (T(rung run with boundaries) - T(plain run of the same steps)) / boundaries.

    python benchmarks/bench_rung_cost.py --out benchmarks/results/rung_cost
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    import dataclasses

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
    short, long = rungs[0], rungs[-1]

    def timed(steps: int, hook=None) -> float:
        cfg = dataclasses.replace(base, steps=steps)
        start = time.perf_counter()
        train_proxy(spec, cfg, rungs=hook)
        return time.perf_counter() - start

    timed(short)  # warm: the glyph renderings are cached on disk, imports loaded
    rows = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            hook = RungHook(rungs, lambda _i, _s: True, val_subset=256, checkpoint=Path(tmp) / "run.ckpt")
            row = {"round": r, "plain_short_s": timed(short), "plain_long_s": timed(long), "rungs_long_s": timed(long, hook)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("plain_short_s", "plain_long_s", "rungs_long_s")}
    per_step = (med["plain_long_s"] - med["plain_short_s"]) / (long - short)
    before = med["plain_short_s"] - short * per_step
    after = (med["rungs_long_s"] - med["plain_long_s"]) / (len(rungs) - 1)
    summary = {"spec": args.spec, "data": args.data, "input_side": base.resolution, "rungs": rungs,
               "per_step_s": round(per_step, 4), "fixed_cost_per_fresh_call_s": round(before, 3),
               "cost_per_boundary_now_s": round(after, 3), "medians": med, "rounds": rows}
    md = f"""# What a rung costs besides its steps

{args.spec} (quarter width, depth cap 4) on {args.data} at {base.resolution} px, batch 32, 4000 training / 500
validation images (the multi-fidelity benchmark's training), one thread, medians of {args.repeats} interleaved rounds.

| | seconds |
| --- | --- |
| one training step | {per_step:.3f} |
| **before**: fixed cost of each rung, at least (a fresh training call: data, build, full validation; the checkpoint reload and save it also paid are not in it) | **{before:.2f}** |
| **now**: cost of a rung boundary (256-image validation, checkpoint write) | **{after:.2f}** |

A {short}-step first rung cost {short * per_step + before:.1f} s before ({(short * per_step + before) / (long * per_step + before):.0%} of a {long}-step
training) and costs {short * per_step + after:.1f} s now ({(short * per_step + after) / (long * per_step + before):.0%}); rungs {rungs}.
"""
    _common.RESULTS = args.out.parent
    _common.write(args.out.name, {"stamp": _common.stamp(), "summary": summary}, md)


if __name__ == "__main__":
    main()
