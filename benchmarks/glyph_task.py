"""Validation of the ``glyphs`` task itself: does its accuracy see resolution and the extra stage?

Questions (the report answers each with numbers and seeds):
  (a) FastViTHD gains top-1 from each resolution step to the next over the CPU tier, by more than the
      seed-to-seed spread;
  (b) at a fixed resolution, FastViTHD (stride 64) and the same network at stride 32 differ by more than
      the spread (and in which direction);
  (c) FastVLM's claim at equal tokens: FastViTHD at twice the resolution against the stride-32 variant at
      the lower one (the same visual tokens).
  (d) comes from the fidelity study on glyphs (analysis/proxy_fidelity_glyphs).

Every unit is one training (variant, candidate resolution, seed) of the quarter-width copy at the input side
the options' side rule gives (1/8 of the resolution on this CPU). Each finished unit is appended to
``runs.jsonl`` in --out as it ends, so an interrupted run resumes where it stopped; ``--report-only``
rewrites the report from the log.

    python benchmarks/glyph_task.py --out analysis/glyphs_task
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS = ("fastvithd", "fastvithd_stride32")


def _variants():
    from archsearch.ablation import build_variants, load_ablation

    cfg = load_ablation(ROOT / "trials" / "ablate_downsampling.yaml")
    return {s.name: s for s in build_variants(cfg) if s.name in VARIANTS}


def units(resolutions, seeds):
    out = [("fastvithd", r, s) for r in resolutions for s in seeds]
    # (b) and (c): the stride-32 variant at the lowest and the highest resolution but one, and at the highest.
    out += [("fastvithd_stride32", r, s) for r in sorted({resolutions[-1], resolutions[len(resolutions) // 2 - 1]})
            for s in seeds]
    return out


def _key(u) -> str:
    return f"{u[0]}@{u[1]}:seed{u[2]}"


def _done(log: Path) -> dict:
    from _common import finished_units

    return finished_units(log)


def run(args) -> None:
    import torch

    from archsearch.options import TrainProxyConfig
    from archsearch.proxy.train import train_proxy

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    specs = _variants()
    base = TrainProxyConfig(data="glyphs", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            train_size=args.train_size, val_size=args.val_size, val_every=max(1, args.steps // 4))
    for u in units(args.resolutions, args.seeds):
        if _key(u) in _done(log):
            continue
        name, res, seed = u
        cfg = dataclasses.replace(base.for_candidate(res), seed=seed)
        r = train_proxy(specs[name], cfg)
        rec = {"key": _key(u), "variant": name, "resolution": res, "seed": seed, "input_side": cfg.resolution,
               "tokens": specs[name].visual_tokens(res), "val_top1": r.val_top1, "val_loss": r.val_loss,
               "train_loss": r.train_loss, "seconds": round(r.seconds, 1), "history": r.history,
               "config": dataclasses.asdict(cfg), "threads": args.threads,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{rec['key']}: top-1 {r.val_top1:.3f} at {cfg.resolution} px in {r.seconds:.0f} s", flush=True)


class _Cells:
    """Top-1 of the finished units by (variant, resolution): each cell's seeds, its mean, and its formatted row."""

    def __init__(self, runs: dict) -> None:
        self.runs = runs
        #: (variant, resolution) -> {seed: top-1}; ``by`` holds the same values in seed order.
        self.by_seed: dict = {}
        for r in runs.values():
            self.by_seed.setdefault((r["variant"], r["resolution"]), {})[r["seed"]] = r["val_top1"]
        self.by = {cell: [v[s] for s in sorted(v)] for cell, v in self.by_seed.items()}

    def mean(self, variant: str, res: int):
        v = self.by.get((variant, res), [])
        return statistics.fmean(v) if v else None

    def fmt(self, variant: str, res: int) -> str:
        v = self.by.get((variant, res), [])
        return "-" if not v else f"{statistics.fmean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})"

    def first(self, variant: str, res: int) -> dict:
        return next(r for r in self.runs.values() if r["variant"] == variant and r["resolution"] == res)

    def resolutions(self, variant: str) -> list:
        return sorted(r for (v, r) in self.by if v == variant)


def _t_interval(diff: float, var_terms: list, dfs: list) -> tuple:
    """``diff`` +- t(0.975) x its standard error, from per-sample variance terms (Welch-Satterthwaite df)."""
    from scipy import stats

    se2 = sum(var_terms)
    if se2 == 0:
        return diff, diff
    df = se2 ** 2 / sum(v ** 2 / d for v, d in zip(var_terms, dfs))
    half = float(stats.t.ppf(0.975, df)) * se2 ** 0.5
    return diff - half, diff + half


def _paired(c: "_Cells", one: tuple, other: tuple) -> str:
    """The same difference paired by seed (a seed gives both cells the same data order): in how many seeds
    ``one`` is ahead, and the paired 95% interval of the mean difference."""
    a, b = c.by_seed[one], c.by_seed[other]
    d = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if len(d) < 2:
        return "-"
    lo, hi = _t_interval(statistics.fmean(d), [statistics.variance(d) / len(d)], [len(d) - 1])
    return f"{sum(x > 0 for x in d)} of {len(d)}, [{lo:+.3f}, {hi:+.3f}]"


def _verdicts(c: "_Cells", diff: float, one: tuple, other: tuple) -> str:
    """How a difference between two cells (``diff`` = mean of ``one`` - mean of ``other``) compares with the seed
    noise: its 95% interval (Welch's t over the cells' seeds), whether that interval excludes 0, and whether the
    two cells' seeds are apart (every seed of one above every seed of the other)."""
    a, b = c.by[one], c.by[other]
    apart = "yes" if min(a) > max(b) or min(b) > max(a) else "no"
    if min(len(a), len(b)) < 2:
        return f"- | - | {apart} | -"
    lo, hi = _t_interval(diff, [statistics.variance(a) / len(a), statistics.variance(b) / len(b)], [len(a) - 1, len(b) - 1])
    return f"[{lo:+.3f}, {hi:+.3f}] | {'yes' if lo > 0 or hi < 0 else 'no'} | {apart} | {_paired(c, one, other)}"


#: The columns :func:`_verdicts` fills, after each question's own.
_VERDICT_COLUMNS = ("95% interval (Welch t)", "beyond the seed noise?", "seeds apart?",
                    "paired by seed: first ahead in, 95% interval")


def _head(*cols: str) -> list:
    """A table's header and alignment rows: the question's columns (a trailing ``>`` right-aligns one) and the
    verdict columns, so that the two rows always have as many cells."""
    cols = (*cols, *_VERDICT_COLUMNS)
    names = [c.rstrip(">") for c in cols]
    return ["| " + " | ".join(names) + " |", "| " + " | ".join("---:" if c.endswith(">") else "---" for c in cols) + " |"]


def _questions(c: "_Cells") -> list:
    """(a) each resolution step of FastViTHD, (b) stride 64 against 32 at one resolution, (c) at equal tokens."""
    lines = ["", "## (a) Each resolution step, FastViTHD\n", *_head("step", "gain in mean top-1>")]
    res_hd = c.resolutions("fastvithd")
    for lo, hi in zip(res_hd, res_hd[1:]):
        a, b = c.mean("fastvithd", lo), c.mean("fastvithd", hi)
        if a is not None and b is not None:
            lines.append(f"| {lo} -> {hi} | {b - a:+.3f} | {_verdicts(c, b - a, ('fastvithd', hi), ('fastvithd', lo))} |")
    lines += ["", "## (b) FastViTHD (stride 64) against the same network at stride 32, same resolution\n",
              *_head("resolution>", "stride 64", "stride 32", "difference (64 - 32)>")]
    for res in c.resolutions("fastvithd_stride32"):
        a, b = c.mean("fastvithd", res), c.mean("fastvithd_stride32", res)
        if a is not None and b is not None:
            lines.append(f"| {res} | {c.fmt('fastvithd', res)} | {c.fmt('fastvithd_stride32', res)} | {a - b:+.3f} | "
                         f"{_verdicts(c, a - b, ('fastvithd', res), ('fastvithd_stride32', res))} |")
    lines += ["", "## (c) Equal tokens: FastViTHD at 2R against stride 32 at R\n",
              *_head("FastViTHD at>", "stride 32 at>", "tokens>", "FastViTHD", "stride 32", "difference>")]
    for res in c.resolutions("fastvithd_stride32"):
        a, b = c.mean("fastvithd", 2 * res), c.mean("fastvithd_stride32", res)
        if a is not None and b is not None:
            lines.append(f"| {2 * res} | {res} | {c.first('fastvithd_stride32', res)['tokens']} | {c.fmt('fastvithd', 2 * res)} "
                         f"| "
                         f"{c.fmt('fastvithd_stride32', res)} | {a - b:+.3f} | "
                         f"{_verdicts(c, a - b, ('fastvithd', 2 * res), ('fastvithd_stride32', res))} |")
    return lines


def report(args) -> Path:
    out = Path(args.out)
    runs = _done(out / "runs.jsonl")
    if not runs:
        raise SystemExit(f"{out / 'runs.jsonl'}: no finished units")
    cfg = next(iter(runs.values()))["config"]
    seeds = sorted({r["seed"] for r in runs.values()})
    c = _Cells(runs)
    # The seed-to-seed spread: per (variant, resolution) cell with two seeds or more, max - min; its median over cells.
    multi = [v for v in c.by.values() if len(v) >= 2]
    spreads = [max(v) - min(v) for v in multi]
    counts = sorted({len(v) for v in multi}) or [0]
    n_seeds = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    spread = statistics.median(spreads) if spreads else float("nan")
    worst = max(spreads) if spreads else float("nan")
    lines = [
        "# The `glyphs` task: does accuracy see resolution and the extra downsampling stage?\n",
        f"Regenerate: `{args.command} --seeds {' '.join(map(str, seeds))}` (resumes from `runs.jsonl`; `--report-only` rewrites "
        f"this report). "
        f"Seeds {seeds}; {len(runs)} trainings.\n",
        f"Each training: the quarter-width copy (widths x{cfg['width_mult']}, depth cap {cfg['max_depth']}) on `glyphs`, "
        f"{cfg['steps']} steps, batch {cfg['batch_size']}, AdamW lr {cfg['lr']} (one-cycle), {cfg['train_size']} training "
        f"and {cfg['val_size']} validation scenes (validation fonts held out), input side = "
        f"{cfg['resolution_scale']} x the candidate's resolution (this CPU's tier). Chance is 0.100.\n",
        f"**Seed-to-seed spread** (max - min over seeds in one cell): median {spread:.3f}, largest {worst:.3f} "
        f"over {len(spreads)} cells ({n_seeds} seeds each). Each difference below is set against that noise "
        f"by its 95% interval (Welch's t over the two cells' seeds: beyond the noise when the interval excludes 0) and "
        f"by whether the two cells' seeds are apart (every seed of one above every seed of the other); and paired by "
        f"seed, since a seed gives both cells the same data order (in how many seeds the first cell is ahead, and the "
        f"paired 95% interval).\n",
        "## Top-1 by variant and resolution (mean, then each seed in seed order)\n",
        "| variant | resolution | input side | tokens | top-1 |", "| --- | ---: | ---: | ---: | --- |",
    ]
    for (variant, res) in sorted(c.by, key=lambda k: (k[0], k[1])):
        r0 = c.first(variant, res)
        lines.append(f"| {variant} | {res} | {r0['input_side']} | {r0['tokens']} | {c.fmt(variant, res)} |")
    lines += _questions(c)
    lines += _two_seed_reference()
    lines += ["",
              "Conditions: " + ", ".join(sorted({f"{r['threads']} thread(s)" for r in runs.values()})) +
              f"; training seconds per unit {min(r['seconds'] for r in runs.values()):.0f}-"
              f"{max(r['seconds'] for r in runs.values()):.0f} (shared 2-core host: compare nothing across sessions)."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

#: (d): the fidelity studies whose two-seed references answer it, and the fewest specs it asks for.
STUDIES = (("glyphs", ROOT / "analysis" / "proxy_fidelity_glyphs"), ("Fashion-MNIST", ROOT / "analysis" / "proxy_fidelity"))
D_MIN_SPECS = 20


def _two_seed_reference() -> list:
    """(d) from the fidelity studies' ``fidelity.json``: seed-vs-seed Kendall tau and the reference top-1 spread
    over the flagship space's specs with both reference runs, glyphs beside Fashion-MNIST."""
    lines = ["", "## (d) Two-seed reference over the flagship space's specs", "",
             "From the fidelity studies (`archsearch proxy-fidelity`; their reports give the commands and seeds): every "
             "spec trained twice (seeds 0 and 1) for the reference; tau between the two seeds is how far any proxy "
             "could rank.", "",
             "| task | specs with both references | sampled resolutions | input side trained | seed-vs-seed tau [95% bootstrap] "
             "| reference top-1 range |",
             "| --- | ---: | --- | --- | --- | --- |"]
    n_glyphs = 0
    for task, folder in STUDIES:
        path = folder / "fidelity.json"
        if not path.exists():
            lines.append(f"| {task} | - | - | - | not run (`{folder.relative_to(ROOT)}`) | - |")
            continue
        r = json.loads(path.read_text(encoding="utf-8"))
        lo, hi = r["reference_top1_range"]
        ci = r.get("noise_ceiling_ci") or [None, None]
        res, side = r.get("resolution_range"), r.get("input_side_range")
        side_text = ((f"{side[0]} px" if side[0] == side[1] else f"{side[0]}-{side[1]} px") if side
                     else f"{r['plan']['train']['resolution']} px (fixed)")
        tau = r["noise_ceiling_tau"]
        lines.append(f"| {task} | {r['n_specs']} | {f'{res[0]}-{res[1]} px' if res else '-'} | "
                     f"{side_text} | "
                     + (f"{tau:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if tau is not None else "-") + f" | {lo:.3f}-{hi:.3f} |")
        if task == "glyphs":
            n_glyphs = r["n_specs"]
    if n_glyphs < D_MIN_SPECS:
        lines += ["", f"**(d) is not answered yet**: {n_glyphs} glyphs specs have both references, {D_MIN_SPECS} are "
                  "needed; the study resumes unit by unit (rerun its command)."]
    return lines


def _without_seeds(argv) -> list:
    """The command line without its ``--seeds`` values: the report names the seeds its log holds (they may have
    run in several processes, one seed each)."""
    out, skipping = [], False
    for a in argv:
        skipping = a == "--seeds" or (skipping and not a.startswith("-"))
        if not skipping:
            out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="analysis/glyphs_task")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 768, 1024])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    args.command = "python benchmarks/glyph_task.py " + " ".join(_without_seeds(a for a in sys.argv[1:] if a != "--report-only"))
    if not args.report_only:
        run(args)
    print(report(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
