"""Latency predictor vs measured latency on specs sampled from the shipped spaces.

The table is filled block by block; the scale factor is fitted on whole models drawn with a different
seed from the evaluated ones, so no evaluated spec's end-to-end latency enters the predictor.

    python benchmarks/bench_predictor.py [-n 30] [--fit 6] [--resolution 256]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import stamp, write  # noqa: E402

from archsearch.measure.latency import LatencyConfig, measure_latency  # noqa: E402
from archsearch.measure.predictor import LatencyPredictor  # noqa: E402
from archsearch.space import draw, load_space  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30, help="specs evaluated (split evenly over the spaces)")
    ap.add_argument("--fit", type=int, default=6, help="whole models for the scale fit (another seed)")
    ap.add_argument("--resolution", default="256", help="resolution override for the spaces (cost control)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--statistic", default="median", choices=["median", "p10"],
                    help="summed per-component statistic, compared with the same statistic measured end to end")
    args = ap.parse_args()
    spaces = sorted((ROOT / "search_spaces").glob("*.yaml"))
    overrides = [f"resolution=[{args.resolution}]"]
    cfg = LatencyConfig(warmup=3, repeats=args.repeats)
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
        predicted = predictor.predict(c.spec, c.resolution)
        lat = measure_latency(c.spec, c.resolution, cfg)
        measured = lat.stats.p10_ms if args.statistic == "p10" else lat.stats.median_ms
        err = (predicted - measured) / measured
        rows.append({"arch": c.spec.code, "spec_hash": c.spec.spec_hash, "resolution": c.resolution,
                     "predicted_ms": predicted, "measured_ms": measured, "measured_iqr_ms": lat.stats.iqr_ms,
                     "rel_error": err})
        print(f"{c.spec.code:28s} pred {predicted:8.1f} meas {measured:8.1f} ({err:+.1%})", flush=True)
    errs = [abs(r["rel_error"]) for r in rows]
    within10 = sum(e <= 0.10 for e in errs) / len(errs)
    within15 = sum(e <= 0.15 for e in errs) / len(errs)
    md = [
        f"### Latency predictor vs measured ({args.statistic}): {len(rows)} specs from "
        f"{', '.join(p.stem for p in spaces)} at {args.resolution} px\n",
        f"Within +-10%: **{within10:.0%}**, within +-15%: **{within15:.0%}**, median |error| {statistics.median(errs):.1%}, "
        f"max |error| {max(errs):.1%}. Scale factor {predictor.scale:.3f} fitted on {args.fit} other specs; "
        f"table of {len(predictor.entries)} block entries; {time.perf_counter() - start:.0f} s in all. "
        f"Conditions: torch-cpu, {cfg.threads} threads, median of {cfg.repeats} after {cfg.warmup} warm-up.\n",
        f"| arch | res | predicted ms | measured {args.statistic} ms (IQR) | error |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        md.append(f"| {r['arch']} | {r['resolution']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} "
                  f"({r['measured_iqr_ms']:.1f}) | {r['rel_error']:+.1%} |")
    write(f"predictor_{args.resolution}_{args.statistic}", {"stamp": stamp(), "rows": rows, "within_10": within10, "within_15": within15,
                                           "scale": predictor.scale, "fit": predictor.fit}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
