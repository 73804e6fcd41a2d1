"""Latency repeatability: the same model's median in N fresh processes; max/min of the medians.

    python benchmarks/bench_repeatability.py [--spec fastvit_sa12] [--resolution 256] [--processes 5]
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
    args = ap.parse_args()
    medians, iqrs, conditions = [], [], None
    for i in range(args.processes):
        out = subprocess.run(
            [sys.executable, "-m", "archsearch.cli", "measure", args.spec, "-r", args.resolution, "-m", "latency",
             "--backend", args.backend, "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--no-cache", "--json"],
            capture_output=True, text=True, check=True,
        )
        lat = json.loads(out.stdout)[0]["latency"]
        medians.append(lat["median_ms"])
        iqrs.append(lat["iqr_ms"])
        conditions = {k: lat[k] for k in ("backend", "threads", "warmup", "repeats", "batch", "flush_denormal")}
        print(f"process {i}: median {lat['median_ms']:.2f} ms (IQR {lat['iqr_ms']:.2f})", flush=True)
    ratio = max(medians) / min(medians)
    md = (
        f"### Latency repeatability: {args.spec} at {args.resolution} px, {args.processes} fresh processes\n\n"
        f"| process | " + " | ".join(str(i) for i in range(len(medians))) + " |\n"
        f"| --- | " + " | ".join("---:" for _ in medians) + " |\n"
        f"| median ms | " + " | ".join(f"{m:.2f}" for m in medians) + " |\n"
        f"| IQR ms | " + " | ".join(f"{q:.2f}" for q in iqrs) + " |\n\n"
        f"max/min of the process medians: **{ratio:.3f}**; median of medians {statistics.median(medians):.2f} ms. "
        f"Conditions: {conditions['backend']}, {conditions['threads']} threads, {conditions['warmup']} warm-up, "
        f"{conditions['repeats']} repeats, batch {conditions['batch']}, denormals flushed, reparameterized.\n"
    )
    write(f"repeatability_{args.spec}_{args.resolution}", {"stamp": stamp(), "medians_ms": medians, "iqrs_ms": iqrs,
                                                           "max_over_min": ratio, "conditions": conditions}, md)


if __name__ == "__main__":
    main()
