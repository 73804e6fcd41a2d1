"""Latency repeatability: the same model's median in N fresh processes; max/min of the medians.

    python benchmarks/bench_repeatability.py [--spec fastvit_sa12] [--resolution 256] [--processes 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import stamp, write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="fastvit_sa12")
    ap.add_argument("--resolution", default="256")
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--backend", default="torch-cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (default 1: on the 2-vCPU VM 2 threads were at most 1.25x faster and "
                         "every daemon wake-up stalls the whole parallel region)")
    ap.add_argument("--vs", default="fastvit_t8", help="reference timed interleaved in each process (ratio)")
    args = ap.parse_args()
    medians, iqrs, p10s, ratios, conditions = [], [], [], [], None
    for i in range(args.processes):
        out = subprocess.run(
            [sys.executable, "-m", "archsearch.cli", "measure", args.spec, "-r", args.resolution, "-m", "latency",
             "--backend", args.backend, "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--no-cache", "--json",
             "--vs", args.vs],
            capture_output=True, text=True, check=True,
        )
        row = json.loads(out.stdout)[0]
        lat = row["latency"]
        medians.append(lat["median_ms"])
        iqrs.append(lat["iqr_ms"])
        p10s.append(lat["p10_ms"])
        ratios.append(row["latency_ratio_vs"]["median"])
        conditions = {k: lat[k] for k in ("backend", "threads", "warmup", "repeats", "batch", "flush_denormal")}
        print(f"process {i}: median {lat['median_ms']:.2f} ms (IQR {lat['iqr_ms']:.2f}), p10 {lat['p10_ms']:.2f}, "
              f"ratio vs {args.vs} {ratios[-1]:.3f}", flush=True)
    ratio = max(medians) / min(medians)
    spread = lambda xs: max(xs) / min(xs)  # noqa: E731
    md = (
        f"### Latency repeatability: {args.spec} at {args.resolution} px, {args.processes} fresh processes\n\n"
        f"| process | " + " | ".join(str(i) for i in range(len(medians))) + " |\n"
        f"| --- | " + " | ".join("---:" for _ in medians) + " |\n"
        f"| median ms | " + " | ".join(f"{m:.2f}" for m in medians) + " |\n"
        f"| IQR ms | " + " | ".join(f"{q:.2f}" for q in iqrs) + " |\n"
        f"| p10 ms | " + " | ".join(f"{q:.2f}" for q in p10s) + " |\n"
        f"| latency / {args.vs} (interleaved) | " + " | ".join(f"{q:.3f}" for q in ratios) + " |\n\n"
        f"max/min of the process medians: **{ratio:.3f}**; of the p10s: {spread(p10s):.3f}; of the interleaved "
        f"ratios to {args.vs}: {spread(ratios):.3f}. Median of medians {statistics.median(medians):.2f} ms. "
        f"Conditions: {conditions['backend']}, {conditions['threads']} threads, {conditions['warmup']} warm-up, "
        f"{conditions['repeats']} repeats, batch {conditions['batch']}, denormals flushed, reparameterized.\n"
    )
    write(f"repeatability_{args.spec}_{args.resolution}_t{conditions['threads']}", {"stamp": stamp(), "medians_ms": medians, "iqrs_ms": iqrs,
                                                           "max_over_min": ratio, "p10s_ms": p10s, "ratios": ratios,
                                                           "conditions": conditions}, md)


if __name__ == "__main__":
    main()
