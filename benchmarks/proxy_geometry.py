"""The geometry study: which cheap stand-in of an encoder keeps the verdicts of the deployed one?

Every unit is one training (spec, candidate resolution, geometry, seed) on ``glyphs`` under one of the
geometries of :mod:`archsearch.geometry`, all with the same scaling (widths, depth cap, batch, steps), so that
only the geometry differs:

* ``copy``: today's copy, strides kept, input side 1/8 of the resolution (token grid 1/64 of the deployed);
* ``late_grid``: the same side, earliest downsamplings made stride 1, so the last stages see the deployed grid;
* ``reference``: twice the side (1/4 of the resolution) and the deployed grid: the highest fidelity this CPU
  affords; ``full`` (the GPU tier, ``benchmarks/geometry_gpu.sh``) is the encoder at its own resolution.

Each finished unit is appended to ``runs.jsonl`` in --out as it ends (cheapest first: every spec's copy, then
late_grid, then the reference), so an interrupted study resumes where it stopped; ``--report-only`` rewrites
``geometry.json`` and ``report.md`` from the log.

    python benchmarks/proxy_geometry.py --out analysis/proxy_geometry            # run or resume, then report
    python benchmarks/proxy_geometry.py --out analysis/proxy_geometry --report-only
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: (label, variant, candidate resolution): strides 16-128, resolutions 512-1024, the issue's anchors included.
SPECS = (
    ("fastvithd@1024", "fastvithd", 1024), ("fastvithd_s32@1024", "fastvithd_stride32", 1024),
    ("fastvithd_s32@512", "fastvithd_stride32", 512), ("fastvit_sa12@512", "fastvit_sa12", 512),
    ("fastvithd@512", "fastvithd", 512), ("fastvithd@768", "fastvithd", 768),
    ("fastvithd_s32@768", "fastvithd_stride32", 768), ("fastvithd_s128@1024", "fastvithd_stride128", 1024),
    ("fastvithd_s128@512", "fastvithd_stride128", 512), ("fastvithd_s128@768", "fastvithd_stride128", 768),
    ("fastvithd_s16@512", "fastvithd_stride16", 512), ("fastvit_t8@512", "fastvit_t8", 512),
    ("fastvit_t8@1024", "fastvit_t8", 1024),
)
#: The stride verdicts the study reads: (question, stride-64 spec, stride-32 spec).
VERDICTS = (
    ("64 vs 32 at 512 px", "fastvithd@512", "fastvithd_s32@512"),
    ("64 vs 32 at 768 px", "fastvithd@768", "fastvithd_s32@768"),
    ("64 vs 32 at 1024 px", "fastvithd@1024", "fastvithd_s32@1024"),
    ("64 at 1024 vs 32 at 512 (256 tokens each)", "fastvithd@1024", "fastvithd_s32@512"),
)
CPU_GEOMETRIES = ("copy", "late_grid", "reference")
REFERENCE = "reference"
CHANCE = 0.1


def variants() -> dict:
    """Every variant of SPECS as an ArchSpec (FastViTHD's stride edits, and two FastViT references)."""
    from archsearch.references import get_reference

    hd = get_reference("fastvithd").spec
    stages = list(hd.stages)

    def with_downsample(flags):
        return dataclasses.replace(hd, stages=tuple(dataclasses.replace(s, downsample=f) for s, f in zip(stages, flags)))

    return {"fastvithd": hd, "fastvithd_stride32": with_downsample((False, True, True, True, False)),
            "fastvithd_stride128": with_downsample((True, True, True, True, True)),
            "fastvithd_stride16": with_downsample((False, True, True, False, False)),
            "fastvit_sa12": get_reference("fastvit_sa12").spec, "fastvit_t8": get_reference("fastvit_t8").spec}


def base_config(args, geometry: str):
    from archsearch.options import TrainProxyConfig

    full = geometry == "full"
    return TrainProxyConfig(data="glyphs", geometry="copy" if full else geometry, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, train_size=args.train_size, val_size=args.val_size, val_every=args.steps,
                            width_mult=1.0 if full else args.width_mult, max_depth=None if full else args.max_depth,
                            resolution_scale=1.0 if full else None, accelerator=args.accelerator,
                            data_workers=args.data_workers)


def units(args, specs: dict) -> list:
    """Every (label, geometry, seed), cheapest first over all geometries (the trained network's MACs per image),
    a spec's seeds together: the cheap deployed-grid units at 512 px come long before the 1024 px ones."""
    from archsearch.measure.flops import count_complexity

    cost = {}
    for geometry in args.geometries:
        for label, variant, res in SPECS:
            cfg = base_config(args, geometry).for_candidate(res)
            cost[(label, geometry)] = count_complexity(cfg.scaled(specs[variant]), cfg.resolution).macs
    return [(label, geometry, seed) for (label, geometry) in sorted(cost, key=cost.get) for seed in args.seeds]


def _key(label: str, geometry: str, seed: int) -> str:
    return f"{label}:{geometry}:seed{seed}"


def done(out: Path) -> dict:
    """Every finished unit in ``out/runs*.jsonl`` (one file per process that ran units: GPU shards write their own)."""
    from _common import finished_units

    return finished_units(*sorted(Path(out).glob("runs*.jsonl")))


def run(args) -> None:
    import torch

    from archsearch.proxy.train import train_proxy

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Path(args.runs) if args.runs else out / "runs.jsonl"
    specs, by_label = variants(), {label: (variant, res) for label, variant, res in SPECS}
    k_shard, n_shards = (int(x) for x in args.shard.split("/"))
    todo = [u for i, u in enumerate(units(args, specs)) if i % n_shards == k_shard and _key(*u) not in done(out)]
    deadline = time.monotonic() + args.deadline_s if args.deadline_s else None
    for k, (label, geometry, seed) in enumerate(todo, 1):
        if deadline is not None and time.monotonic() > deadline:
            print(f"deadline reached; {len(todo) - k + 1} units left (rerun to resume)", flush=True)
            break
        variant, res = by_label[label]
        cfg = dataclasses.replace(base_config(args, geometry).for_candidate(res), seed=seed)
        spec = specs[variant]
        r = train_proxy(spec, cfg)
        geo = cfg.proxy_geometry(cfg.data)
        rec = {"key": _key(label, geometry, seed), "label": label, "variant": variant, "resolution": res,
               "geometry": geometry, "seed": seed, "spec_hash": spec.spec_hash, "arch": spec.code,
               "stride": spec.output_stride, "tokens": spec.visual_tokens(res), "input_side": cfg.resolution,
               **geo.grids(spec, res), "trained_arch": cfg.scaled(spec).code, "val_top1": r.val_top1,
               "val_loss": r.val_loss, "train_loss": r.train_loss, "loss_sum": r.loss_sum, "seconds": round(r.seconds, 1),
               "s_per_step": round(r.seconds / cfg.steps, 3), "config": dataclasses.asdict(cfg), "threads": args.threads,
               "device": args.accelerator, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"[{k}/{len(todo)}] {rec['key']}: top-1 {r.val_top1:.3f} at {cfg.resolution} px, grid "
              f"{rec['proxy_grid']} (deployed {rec['deployed_grid']}), {r.seconds:.0f} s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "analysis" / "proxy_geometry"))
    p.add_argument("--geometries", nargs="+", default=list(CPU_GEOMETRIES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width-mult", type=float, default=0.25)
    p.add_argument("--max-depth", type=int, default=4)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--deadline-s", type=float, default=0.0, help="stop starting units after this many seconds (0: none)")
    p.add_argument("--data-workers", type=int, default=0, help="DataLoader processes rendering scenes (GPU tier)")
    p.add_argument("--shard", default="0/1", help="K/N: run every N-th unit from the K-th (processes sharing one GPU)")
    p.add_argument("--runs", default=None, help="the file this process appends to (default OUT/runs.jsonl)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-report", action="store_true", help="run units only (a shard; report where all are gathered)")
    args = p.parse_args(argv)
    if not args.report_only:
        run(args)
    if not args.no_report:
        from proxy_geometry_report import write  # noqa: E402 - benchmarks/ is on the path when run as a script

        write(Path(args.out), command=_command(args))
    return 0


def _command(args) -> str:
    return (f"python benchmarks/proxy_geometry.py --out {os.path.relpath(args.out, ROOT)} --seeds "
            f"{' '.join(map(str, args.seeds))} "
            f"--steps {args.steps} --batch-size {args.batch_size} --width-mult {args.width_mult} --max-depth {args.max_depth}")


if __name__ == "__main__":
    sys.exit(main())
