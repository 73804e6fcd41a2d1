"""The ``remote`` latency backend against local ONNX Runtime: agreement and overhead per trial.

A ``device-serve`` is started on 127.0.0.1 (the same machine, so the two backends time the same ONNX
graph with the same ONNX Runtime on the same cores); for each of N specs drawn from a space, the spec is
measured with ``backend: onnxruntime`` here and with ``backend: remote`` through the server, in
alternating order (local first for even specs, remote first for odd ones) so that drift hits both alike.

* agreement: remote median / local median per spec (1.0 = the same number);
* overhead per trial: wall-clock of a remote measurement minus that of the local one (both export the
  model to ONNX; the remote one adds the upload, the job's child process and its checks).

Each finished spec is appended to ``remote.jsonl`` under --out, so a stopped run resumes.

    python benchmarks/bench_remote.py --n 10 --resolution 256 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _server(token: str, log: Path) -> tuple[subprocess.Popen, str, str]:
    env = {**os.environ, "ARCHSEARCH_DEVICE_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "archsearch.cli", "device-serve", "--port", "0", "--timeout-s", "600",
                             "--log", str(log)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"device-serve did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0], line.split(" as ")[1].split()[0]


def _timed(spec, resolution, cfg) -> tuple[float, float, dict]:
    from archsearch.measure.latency import measure_latency

    start = time.perf_counter()
    lat = measure_latency(spec, resolution, cfg)
    return lat.latency_ms, time.perf_counter() - start, lat.conditions


def main() -> None:
    from archsearch.options import LatencyConfig
    from archsearch.space import draw, load_space

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "fastvithd.yaml"))
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "remote_latency")
    args = p.parse_args()


    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "remote.jsonl"
    done = {json.loads(x)["spec_hash"] for x in log.read_text().splitlines()} if log.exists() else set()
    space = load_space(args.space)
    candidates, _ = draw(space, args.n, seed=args.seed)
    token = secrets.token_urlsafe(24)
    proc, url, fingerprint = _server(token, args.out / "server_jobs.jsonl")
    os.environ["ARCHSEARCH_DEVICE_TOKEN"] = token
    common = dict(threads=args.threads, warmup=3, repeats=args.repeats, noisy_retries=0)
    local = LatencyConfig(backend="onnxruntime", **common)
    remote = LatencyConfig(backend="remote", url=url, **common)
    try:
        for i, cand in enumerate(candidates):
            spec = cand.spec
            if spec.spec_hash in done:
                continue
            order = [("local", local), ("remote", remote)][:: 1 if i % 2 == 0 else -1]
            row = {"spec_hash": spec.spec_hash, "arch": spec.code, "resolution": args.resolution, "first": order[0][0]}
            for name, cfg in order:
                ms, wall, cond = _timed(spec, args.resolution, cfg)
                row[f"{name}_ms"], row[f"{name}_wall_s"] = ms, round(wall, 3)
                row[f"{name}_device"] = cond["device_fingerprint"]
            row["ratio"] = row["remote_ms"] / row["local_ms"]
            row["overhead_s"] = round(row["remote_wall_s"] - row["local_wall_s"], 3)
            with log.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[{i + 1}/{len(candidates)}] {spec.code}: local {row['local_ms']:.1f} ms, remote {row['remote_ms']:.1f} ms "
                  f"(ratio {row['ratio']:.3f}), overhead {row['overhead_s']:.2f} s", flush=True)
    finally:
        proc.kill()
    _report(args, log, fingerprint)


def _report(args: argparse.Namespace, log: Path, fingerprint: str) -> None:
    """The summary (agreement, overhead per trial) and table of every measured spec in ``log``."""
    import _common

    rows = [json.loads(x) for x in log.read_text().splitlines()]
    ratios = [r["ratio"] for r in rows]
    overheads = [r["overhead_s"] for r in rows]
    summary = {
        "specs": len(rows), "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "within_10pct": sum(abs(r - 1) <= 0.10 for r in ratios), "overhead_s_median": statistics.median(overheads),
        "overhead_s_max": max(overheads), "remote_fingerprint": fingerprint,
        "protocol": {"threads": args.threads, "warmup": 3, "repeats": args.repeats, "resolution": args.resolution},
    }
    table = "\n".join(f"| {r['arch']} | {r['local_ms']:.1f} | {r['remote_ms']:.1f} | {r['ratio']:.3f} | {r['local_wall_s']:.2f} "
                      f"| "
                      f"{r['remote_wall_s']:.2f} | {r['overhead_s']:+.2f} |" for r in rows)
    md = f"""# Remote latency backend vs local ONNX Runtime

`device-serve` on 127.0.0.1 (the same machine: the same graph, ONNX Runtime and cores on both sides),
{len(rows)} specs from `{Path(args.space).name}` at {args.resolution} px, {args.threads} thread(s), median of
{args.repeats} after 3 warm-up, local and remote measurements alternating in order.

- **Agreement** (remote median / local median): median {summary['ratio_median']:.3f}, range
  {summary['ratio_min']:.3f}-{summary['ratio_max']:.3f}; {summary['within_10pct']} of {len(rows)} within 10%.
- **Overhead per trial** (remote wall-clock minus local, both including the ONNX export): median
  {summary['overhead_s_median']:.2f} s, at most {summary['overhead_s_max']:.2f} s: the upload, the job's child process
  (Python, onnx and ONNX Runtime start-up) and its checks.

| spec | local ms | remote ms | ratio | local wall s | remote wall s | overhead s |
| --- | --- | --- | --- | --- | --- | --- |
{table}
"""
    _common.RESULTS = args.out.parent
    _common.write(args.out.name + "/summary", {"stamp": _common.stamp(), "summary": summary, "rows": rows}, md)


if __name__ == "__main__":
    main()
