"""Fast meta-device counter vs fvcore vs ptflops on FastViTHD: wall time and counts side by side.

    python benchmarks/bench_counters.py [--resolution 1024] [--spec fastvithd]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import stamp, write  # noqa: E402

from archsearch.measure.flops import count_complexity  # noqa: E402
from archsearch.references import load_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="fastvithd")
    ap.add_argument("--resolution", type=int, default=1024)
    args = ap.parse_args()
    spec = load_spec(args.spec)
    rows = {}
    for counter in ("fast", "fvcore", "ptflops"):
        c = count_complexity(spec, args.resolution, counter=counter)
        rows[counter] = {
            "seconds": c.conditions["seconds"], "macs": c.macs, "macs_by_op": c.macs_by_op,
            "bias_adds": c.bias_adds, "other_ops": c.conditions.get("other_ops", {}),
        }
        print(counter, rows[counter], flush=True)
    fast = rows["fast"]
    shared = fast["macs_by_op"]["conv"] + fast["macs_by_op"]["linear"]
    fv_shared = rows["fvcore"]["macs_by_op"]["conv"] + rows["fvcore"]["macs_by_op"]["linear"]
    g = lambda n: f"{n / 1e9:.3f}"  # noqa: E731
    md = [
        f"### MAC counters on {args.spec} at {args.resolution} px (deploy form, batch 1)\n",
        "| counter | wall time (s) | total GMACs | conv | linear | attention (SDPA) | other counted |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in rows.items():
        by = r["macs_by_op"]
        other = ", ".join(f"{k} {g(v)}" for k, v in r["other_ops"].items()) or (
            (f"bias adds {g(r['bias_adds'])} (reported apart)" if name == "fast"
             else "bias adds (in total)" if name == "ptflops" else "")
        )
        md.append(
            f"| {name} | {r['seconds']:.2f} | {g(r['macs'])} | {g(by['conv']) if by else '-'} | "
            f"{g(by['linear']) if by else '-'} | {g(by['attention']) if by else 'not counted'} | {other} |"
        )
    md.append("")
    md.append(
        f"Shared ops (conv + linear weights): fast {g(shared)} vs fvcore {g(fv_shared)} GMACs "
        f"(ratio {shared / fv_shared:.6f}); ptflops total {g(rows['ptflops']['macs'])} vs fast shared + bias adds "
        f"{g(shared + fast['bias_adds'])} (ratio {rows['ptflops']['macs'] / (shared + fast['bias_adds']):.6f}). "
        f"fast is {rows['fvcore']['seconds'] / fast['seconds']:.0f}x quicker than fvcore and "
        f"{rows['ptflops']['seconds'] / fast['seconds']:.0f}x quicker than ptflops here."
    )
    write(f"counters_{args.spec}_{args.resolution}", {"stamp": stamp(), "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
