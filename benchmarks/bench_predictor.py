"""Latency predictor vs measured latency on specs sampled from the shipped spaces.

The table is filled block by block; scale and exponent are fitted on whole models drawn with a different
seed from the evaluated ones, so no evaluated spec's end-to-end latency enters the predictor.

    python benchmarks/bench_predictor.py [-n 30] [--fit 12] [--resolution 256] [--threads 1] [--statistic relative] [--default-heap]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import stamp, write  # noqa: E402

from archsearch.measure._heap import heap_mode  # noqa: E402
from archsearch.measure.latency import LatencyConfig, measure_latency  # noqa: E402
from archsearch.measure.predictor import STATISTICS, LatencyPredictor  # noqa: E402
from archsearch.space import draw, load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30, help="specs evaluated (split evenly over the spaces)")
    ap.add_argument("--fit", type=int, default=12, help="whole models for the scale fit (another seed)")
    ap.add_argument("--resolution", default="256", help="resolution override for the spaces (cost control)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (see bench_repeatability.py)")
    ap.add_argument("--statistic", default="relative", choices=list(STATISTICS),
                    help="summed per-component statistic, compared with the same statistic measured end to end; "
                         "relative: ratios to a probe timed interleaved, and each evaluated model is timed "
                         "interleaved with the probe too (the prediction is put on the probe's speed of that run)")
    ap.add_argument("--default-heap", action="store_true",
                    help="time with glibc's default heap (forwards pay page faults), as before the heap was kept")
    args = ap.parse_args()
    spaces = sorted((ROOT / "search_spaces").glob("*.yaml"))
    overrides = [f"resolution=[{args.resolution}]"]
    cfg = LatencyConfig(warmup=3, repeats=args.repeats, threads=args.threads, retain_heap=not args.default_heap)
    predictor = LatencyPredictor(cfg, statistic=args.statistic)
    per_space = -(-args.n // len(spaces))
    fit_per_space = -(-args.fit // len(spaces))
    evaluated, fit_on = [], []
    for path in spaces:
        space = load_space(path, overrides)
        evaluated += draw(space, per_space, seed=0)[0]
        fit_on += draw(space, fit_per_space, seed=1000)[0]
    evaluated = evaluated[: args.n]
    start = time.perf_counter()
    predictor.fit_scale([(c.spec, c.resolution) for c in fit_on[: args.fit]], progress=lambda s: print("fit", s, flush=True))
    rows = []
    for c in evaluated:
        if args.statistic == "relative":
            measured, measured_rel = predictor.measure_relative(c.spec, c.resolution)
            probe_now = measured / measured_rel  # the probe's ms in this very run
            absolute = predictor.predict(c.spec, c.resolution)  # at the probe speed of calibration
            predicted = predictor.predict_relative(c.spec, c.resolution) * probe_now
            iqr = float("nan")
        else:
            absolute = predicted = predictor.predict(c.spec, c.resolution)
            lat = measure_latency(c.spec, c.resolution, cfg)
            measured = lat.stats.p10_ms if args.statistic == "p10" else lat.stats.median_ms
            iqr = lat.stats.iqr_ms
        err = (predicted - measured) / measured
        rows.append({"arch": c.spec.code, "spec_hash": c.spec.spec_hash, "resolution": c.resolution,
                     "predicted_ms": predicted, "measured_ms": measured, "measured_iqr_ms": iqr,
                     "rel_error": err, "absolute_predicted_ms": absolute,
                     "absolute_rel_error": (absolute - measured) / measured})
        print(f"{c.spec.code:28s} pred {predicted:8.1f} meas {measured:8.1f} ({err:+.1%}); "
              f"unrebased {absolute:8.1f} ({rows[-1]['absolute_rel_error']:+.1%})", flush=True)
    errs = [abs(r["rel_error"]) for r in rows]
    within10 = sum(e <= 0.10 for e in errs) / len(errs)
    within15 = sum(e <= 0.15 for e in errs) / len(errs)
    abs_errs = [abs(r["absolute_rel_error"]) for r in rows]
    abs15 = sum(e <= 0.15 for e in abs_errs) / len(abs_errs)
    how = ("Each prediction is the summed probe ratios times the probe's latency timed interleaved with that "
           "model in the same run (`rebase`); without rebasing (probe speed of calibration) "
           f"{abs15:.0%} are within +-15%, median |error| {statistics.median(abs_errs):.1%}. "
           if args.statistic == "relative" else "")
    md = [
        f"### Latency predictor vs measured ({args.statistic}): {len(rows)} specs from "
        f"{', '.join(p.stem for p in spaces)} at {args.resolution} px\n",
        f"Within +-10%: **{within10:.0%}**, within +-15%: **{within15:.0%}**, median |error| {statistics.median(errs):.1%}, "
        f"max |error| {max(errs):.1%}. Fit measured = {predictor.scale:.3g} x sum^{predictor.exponent:.3f} on {args.fit} other specs; "
        f"table of {len(predictor.entries)} block entries; {time.perf_counter() - start:.0f} s in all. "
        f"{how}Conditions: torch-cpu, {cfg.threads} threads, median of {cfg.repeats} after {cfg.warmup} warm-up, "
        f"heap {heap_mode(cfg.retain_heap)}.\n",
        f"| arch | res | predicted ms | measured {args.statistic} ms (IQR) | error |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        md.append(f"| {r['arch']} | {r['resolution']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} "
                  f"({r['measured_iqr_ms']:.1f}) | {r['rel_error']:+.1%} |")
    heap = "_default_heap" if args.default_heap else ""
    write(f"predictor_{args.resolution}_{args.statistic}_t{args.threads}{heap}", {"stamp": stamp(), "rows": rows, "within_10": within10, "within_15": within15, "absolute_within_15": abs15,
                                           "scale": predictor.scale, "fit": predictor.fit}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
