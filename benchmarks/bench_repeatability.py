"""Latency repeatability: the same model's median in N fresh processes; max/min of the medians.

    python benchmarks/bench_repeatability.py [--spec fastvit_sa12] [--resolution 256] [--processes 5]
        [--threads 1] [--schedule sliced|sequential] [--default-heap]

Two schedules answer two questions:

* ``sequential`` runs ``archsearch measure --vs REF`` in one fresh process after another: what a user
  gets from running the command N times. Each process also times REF interleaved, so the table shows
  the reference-normalised ratio beside the absolute median.
* ``sliced`` starts N fresh processes that each build and warm up the model, then take turns on the
  CPU (``--per-turn`` forwards each, ``--turns`` rounds): the machine's drift over minutes hits all
  of them alike, so what is left is the process-to-process part (memory placement, allocator state).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import stamp, write  # noqa: E402

from archsearch.errors import ArchsearchError  # noqa: E402
from archsearch.measure.latency import LatencyStats  # noqa: E402
from archsearch.references import get_reference  # noqa: E402
from archsearch.spec import parse_resolution  # noqa: E402

#: The conditions each result file carries (the same in every process of a run).
CONDITIONS = ("backend", "threads", "warmup", "batch", "flush_denormal", "heap")


def _spread(xs: List[float]) -> float:
    return max(xs) / min(xs)


def _worker(args: argparse.Namespace) -> None:
    """Build, warm up, print the conditions; then time N forwards per line 'N' read on stdin."""
    from archsearch.measure.latency import LatencyConfig, latency_sampler

    cfg = LatencyConfig(threads=args.threads, warmup=args.warmup, retain_heap=not args.default_heap)
    with latency_sampler(get_reference(args.spec).spec, args.resolution, cfg) as sampler:
        print(json.dumps(sampler.conditions, default=str), flush=True)
        for line in sys.stdin:
            n = int(line)
            if n <= 0:
                break
            print(json.dumps(sampler.sample(n)), flush=True)


def _sliced(args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--spec", args.spec, "--resolution", args.resolution,
           "--threads", str(args.threads), "--warmup", str(args.warmup)] + (["--default-heap"] if args.default_heap else [])
    workers = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
    try:
        conditions = [json.loads(w.stdout.readline()) for w in workers]
        samples: List[List[float]] = [[] for _ in workers]
        for turn in range(args.turns):
            for w, out in zip(workers, samples):
                w.stdin.write(f"{args.per_turn}\n")
                w.stdin.flush()
                out.extend(json.loads(w.stdout.readline()))
            if (turn + 1) % 10 == 0 or turn + 1 == args.turns:
                print(f"turn {turn + 1}/{args.turns}: medians so far "
                      + " ".join(f"{statistics.median(s):.1f}" for s in samples), flush=True)
    finally:
        for w in workers:
            if w.poll() is None:
                w.stdin.write("0\n")
                w.stdin.flush()
                w.wait()
    stats = [LatencyStats.from_samples(s) for s in samples]
    return {
        "medians_ms": [s.median_ms for s in stats],
        "iqrs_ms": [s.iqr_ms for s in stats],
        "p10s_ms": [s.p10_ms for s in stats],
        "repeats": [s.repeats for s in stats],
        "conditions": {k: conditions[0][k] for k in CONDITIONS},
    }


def _sequential(args: argparse.Namespace) -> dict:
    rows = []
    for i in range(args.processes):
        out = subprocess.run(
            [sys.executable, "-m", "archsearch.cli", "measure", args.spec, "-r", args.resolution, "-m", "latency",
             "--backend", args.backend, "--threads", str(args.threads), "--repeats", str(args.repeats),
             "--warmup", str(args.warmup), "--no-cache", "--json", "--vs", args.vs]
            + (["--default-heap"] if args.default_heap else []),
            capture_output=True, text=True, check=True,
        )
        rows.append(json.loads(out.stdout)[0])
        lat = rows[-1]["latency"]
        print(f"process {i}: median {lat['median_ms']:.2f} ms (IQR {lat['iqr_ms']:.2f}), p10 {lat['p10_ms']:.2f}, "
              f"ratio vs {args.vs} {rows[-1]['latency_ratio_vs']['median']:.3f}", flush=True)
    lat0 = rows[0]["latency"]
    return {
        "medians_ms": [r["latency"]["median_ms"] for r in rows],
        "iqrs_ms": [r["latency"]["iqr_ms"] for r in rows],
        "p10s_ms": [r["latency"]["p10_ms"] for r in rows],
        "ratios": [r["latency_ratio_vs"]["median"] for r in rows],
        "repeats": [r["latency"]["repeats"] for r in rows],
        "conditions": {k: lat0[k] for k in CONDITIONS},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="fastvit_sa12")
    ap.add_argument("--resolution", default="256")
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--schedule", choices=["sequential", "sliced"], default="sliced")
    ap.add_argument("--repeats", type=int, default=30, help="sequential: timed forwards per process")
    ap.add_argument("--turns", type=int, default=80, help="sliced: rounds of turns")
    ap.add_argument("--per-turn", type=int, default=1,
                    help="sliced: timed forwards per turn (1: each forward meets its own slice of the machine's "
                         "bursts; 5 per turn gave 1.10-1.20 here, as 12 turns sample too few bursts)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--backend", default="torch-cpu", help="sequential only; sliced times torch-cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (default 1: on the 2-vCPU VM 2 threads were at most 1.25x faster and "
                         "every daemon wake-up stalls the whole parallel region)")
    ap.add_argument("--vs", default="fastvit_t8", help="sequential: reference timed interleaved in each process (ratio)")
    ap.add_argument("--default-heap", action="store_true",
                    help="time with glibc's default heap (forwards pay page faults) instead of a retained one")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:  # refuse a bad name before starting 5 processes that would each fail on it
        get_reference(args.spec)
        parse_resolution(args.resolution)
    except ArchsearchError as e:
        ap.error(str(e))
    if args.worker:
        return _worker(args)

    result = _sliced(args) if args.schedule == "sliced" else _sequential(args)
    medians, p10s = result["medians_ms"], result["p10s_ms"]
    cond = result["conditions"]
    rows = [("median ms", medians, ".2f"), ("IQR ms", result["iqrs_ms"], ".2f"), ("p10 ms", p10s, ".2f"),
            ("timed forwards", result["repeats"], "d")]
    if "ratios" in result:
        rows.append((f"latency / {args.vs} (interleaved)", result["ratios"], ".3f"))
    how = (f"one after another, {args.repeats} timed forwards each after {args.warmup} warm-up"
           if args.schedule == "sequential" else
           f"taking turns: {args.turns} rounds of {args.per_turn} forwards each, after {args.warmup} warm-up")
    md = (
        f"### Latency repeatability: {args.spec} at {args.resolution} px, {args.processes} fresh processes, "
        f"{args.schedule}\n\nProcesses ran {how}.\n\n"
        "| process | " + " | ".join(str(i) for i in range(len(medians))) + " |\n"
        "| --- | " + " | ".join("---:" for _ in medians) + " |\n"
        + "".join(f"| {name} | " + " | ".join(format(v, fmt) for v in vals) + " |\n" for name, vals, fmt in rows)
        + f"\nmax/min of the process medians: **{_spread(medians):.3f}**; of the p10s: {_spread(p10s):.3f}"
        + (f"; of the interleaved ratios to {args.vs}: **{_spread(result['ratios']):.3f}**" if "ratios" in result else "")
        + f". Median of medians {statistics.median(medians):.2f} ms. Conditions: {cond['backend']}, "
        f"{cond['threads']} threads, batch {cond['batch']}, denormals flushed, heap {cond['heap']}, reparameterized.\n"
    )
    heap = "_default_heap" if args.default_heap else ""
    write(f"repeatability_{args.spec}_{args.resolution}_t{cond['threads']}_{args.schedule}{heap}",
          {"stamp": stamp(), "schedule": args.schedule, "max_over_min": _spread(medians), **result}, md)


if __name__ == "__main__":
    main()
