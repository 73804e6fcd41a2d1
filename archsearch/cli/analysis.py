"""Commands that write reports from grids of work: ablate, report, proxy-fidelity."""
from __future__ import annotations

import argparse
from typing import Any, Dict
from pathlib import Path

from rich.table import Table

from .._outputs import prepare_output_dir
from ..errors import ConfigError
from ..options import DEFAULT_STORAGE

from ._app import (_accept_overrides, _command, _default, _err, _out, _overwrite_arg, _quiet_arg, _warn)

def _ablate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ablation", metavar="ABLATION.yaml", help="ablation file (trials/ablate_*.yaml)")
    p.add_argument("--out", required=True, help="directory for results.csv, results.json, ablation.json")
    p.add_argument("--quick", action="store_true", help="apply the file's `quick` overrides (a smoke test)")
    p.add_argument("--report", action="store_true", help="also write the Markdown report and plots into --out")
    _overwrite_arg(p)
    _quiet_arg(p)
    _accept_overrides(p, "the ablation file")


@_command("ablate", "measure a base spec and its variants over a grid of resolutions", _ablate_args)
def _ablate(args: argparse.Namespace) -> int:
    from ..ablation import build_variants, load_ablation, run_ablation

    cfg = load_ablation(args.ablation, args.overrides, quick=args.quick)
    total = len(build_variants(cfg)) * len(cfg.resolutions)
    # The regenerate command rewrites its own directory: it replaces what this ablation writes there, nothing else.
    command = " ".join(["archsearch ablate", args.ablation, "--out", args.out, *(["--quick"] if args.quick else []),
                        "--overwrite", *args.overrides])
    from .._display import UnitDisplay

    with UnitDisplay(_out, _err, title=cfg.name, total=total, quiet=args.quiet) as display:
        rows = run_ablation(cfg, Path(args.out), command=command, on_row=display.unit, warn=_warn, overwrite=args.overwrite)
    cols = [c for c in ("variant", "resolution", "tokens", "macs", "latency_ms", "latency_iqr_ms", "ttft_ms") if c in rows[0]]
    table = Table(title=f"ablation {cfg.name} -> {args.out}/results.csv")
    for c in cols:
        table.add_column(c, no_wrap=True)
    for r in rows:
        table.add_row(*(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    _out.print(table)
    if args.report:
        from ..report import report_ablation

        home = prepare_output_dir(args.out, "report", overwrite=True)  # the ablation's own folder: its report goes there
        _out.print(f"report: {report_ablation(Path(args.out), home)}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="STUDY_OR_ABLATION", help="a study name, or a directory written by `archsearch ablate`")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL, for a study (default %(default)s)")
    p.add_argument("--out", required=True, help="directory for report.md and its PNG plots (an ablation's own "
                   "directory is allowed: its report is replaced)")
    _overwrite_arg(p)


@_command("report", "write a Markdown report with plots for a study or an ablation", _report_args)
def _report(args: argparse.Namespace) -> int:
    from ..report import report_ablation, report_study

    if Path(args.target).is_dir():
        if not (Path(args.target) / "ablation.json").exists():
            raise ConfigError("TARGET", f"{args.target} has no ablation.json (run `archsearch ablate` first)")
        home = Path(args.out).resolve() == Path(args.target).resolve()
        out = prepare_output_dir(args.out, "report", overwrite=args.overwrite or home)
        path = report_ablation(Path(args.target), out)
    else:
        from ..pareto import load_study, require_complete

        study = load_study(args.target, args.storage)
        require_complete(study)
        path = report_study(study, prepare_output_dir(args.out, "report", overwrite=args.overwrite))
    _out.print(f"report: {path}")
    return 0


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help="study name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL (default %(default)s)")
    p.add_argument("--out", required=True, help="directory for units.jsonl (resumable), verified.json, verified.md, verified.png")
    p.add_argument("--seeds", nargs="+", default=["0", "1"], help="training seeds, at least 2 (default 0 1)")
    p.add_argument("--reference", action="append", default=[], metavar="NAME@RES",
                   help="a reference to train beside the front (repeatable; default: the study's references)")
    p.add_argument("--tracking-uri", default=None, help="log the result under the study's MLflow run at this URI")
    _quiet_arg(p)
    _accept_overrides(p, "the training setting (archsearch.options.TrainProxyConfig fields), e.g. steps=300 data=glyphs")


@_command("verify", "train a study's Pareto front and its references to check what the search believed", _verify_args)
def _verify(args: argparse.Namespace) -> int:
    from ..fidelity.verify import parse_reference, setting_from, verify_front
    from ..pareto import load_study, require_complete

    overrides = [*args.overrides, *(s for s in args.seeds if "=" in s)]  # KEY=VALUE right after --seeds lands there
    try:
        seeds = [int(s) for s in args.seeds if "=" not in s]
    except ValueError:
        raise ConfigError("--seeds", f"{' '.join(args.seeds)}: seeds are integers") from None
    setting = setting_from(overrides)
    refs = [parse_reference(r) for r in args.reference]
    study = load_study(args.study, args.storage)
    require_complete(study)

    def unit(k: int, n: int, what: str, top1: float) -> None:
        if not args.quiet:
            _out.print(f"[{k}/{n}] {what}: top-1 {top1:.3f}")

    result = verify_front(study, Path(args.out), setting, seeds, references=refs, on_unit=unit, tracking_uri=args.tracking_uri)
    _out.print(f"{len(result['members'])} front members verified ({result['n_at_chance']} at chance, "
               f"{result['n_dominated']} dominated), {len(result['references'])} references -> {args.out}/verified.json")
    return 0


_PLAN_FLAGS = {
    "-n": ("plan", "n", int), "--holdout": ("plan", "n_holdout", int), "--seed": ("plan", "draw_seed", int),
    "--data": ("train", "data", str), "--resolution": ("train", "resolution", int), "--max-depth": ("train", "max_depth", int),
    "--width-mult": ("train", "width_mult", float), "--batch-size": ("train", "batch_size", int),
    "--lr": ("train", "lr", float), "--train-size": ("train", "train_size", int), "--val-size": ("train", "val_size", int),
    "--long-steps": ("plan", "long_steps", int), "--short-steps": ("plan", "short_steps", str),
    "--scalings": ("plan", "scalings", str), "--n-scaling": ("plan", "n_scaling", int),
    "--macs-resolution": ("plan", "macs_resolution", int),
}


def _fidelity_args(p: argparse.ArgumentParser) -> None:
    from ..fidelity import FidelityPlan
    from ..options import TrainProxyConfig

    p.add_argument("space", metavar="SPACE.yaml")
    p.add_argument("--out", required=True, help="directory for specs.json, runs.jsonl, fidelity.json, report.md")
    for flag, (where, name, kind) in _PLAN_FLAGS.items():
        default = _default(FidelityPlan if where == "plan" else TrainProxyConfig, name)
        if name == "short_steps":
            default = ",".join(map(str, default))
        elif name == "scalings":
            default = ",".join(f"{r}x{c or 0}" for r, c in default)
        names = [flag, "-r"] if flag == "--resolution" else [flag]
        p.add_argument(*names, dest=f"plan_{name}", metavar=name.upper(), type=kind, default=None, help=f"default {default}")
    p.add_argument("--data-root", default=None, help="directory with Fashion-MNIST's IDX files")
    p.add_argument("--kinds", default="train,zero_cost,cpu_cost", help="which units to run here (default all)")
    p.add_argument("--accelerator", default="cpu", help="cpu | cuda: where the training units run")
    p.add_argument("--workers", type=int, default=1, help="processes running units at once")
    p.add_argument("--deadline-s", type=float, default=None, help="stop starting units after this many seconds")
    p.add_argument("--analyse-only", action="store_true", help="only turn runs.jsonl into the report")
    _quiet_arg(p)


def _int_list(text: str, key: str) -> tuple:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(key, f"expected comma-separated integers, got {text!r}") from None


def _scalings(text: str) -> tuple:
    out = []
    for item in text.split(","):
        try:
            res, cap = item.lower().split("x")
            out.append((int(res), int(cap) or None))
        except ValueError:
            raise ConfigError("--scalings", f"expected RESxCAP items such as 128x4, got {item!r}") from None
    return tuple(out)


def _fidelity_plan(args: argparse.Namespace):
    """The plan: FidelityPlan's defaults with the options given; and the full command that rebuilds it."""
    import dataclasses

    from ..fidelity import FidelityPlan

    given: Dict[str, Any] = {"space": args.space}
    train: Dict[str, Any] = {}
    for flag, (where, name, _) in _PLAN_FLAGS.items():
        value = getattr(args, f"plan_{name}")
        if value is None:
            continue
        if name == "short_steps":
            value = _int_list(value, flag)
        elif name == "scalings":
            value = _scalings(value)
        elif name in ("max_depth", "macs_resolution"):  # 0: none (no cap; MACs at each spec's own resolution)
            value = value or None
        (given if where == "plan" else train)[name] = value
    base = FidelityPlan()
    plan = FidelityPlan(**{**given, "train": dataclasses.replace(base.train, **train)})
    own = (plan.train.resolution, plan.train.max_depth)
    if own not in plan.scalings:  # the plan's own scaling is always one of the subset's
        plan = dataclasses.replace(plan, scalings=plan.scalings + (own,))
    values = {"plan": plan, "train": plan.train}
    parts = ["archsearch proxy-fidelity", args.space, "--out", args.out]
    for flag, (where, name, _) in _PLAN_FLAGS.items():
        value = getattr(values[where], name)
        if name == "short_steps":
            value = ",".join(map(str, value))
        elif name == "scalings":
            value = ",".join(f"{r}x{c or 0}" for r, c in value)
        parts += [flag, str(0 if value is None else value)]
    return plan, " ".join(parts)


@_command("proxy-fidelity", "fidelity study: how well each accuracy signal ranks specs like long training", _fidelity_args)
def _proxy_fidelity(args: argparse.Namespace) -> int:
    from .. import fidelity

    plan, command = _fidelity_plan(args)
    from .._display import UnitDisplay

    with UnitDisplay(_out, _err, title="fidelity units", total=None, quiet=args.quiet) as display:

        def show(e) -> None:
            if e.error:
                _warn(f"unit {e.label} failed: {e.error}")
            display.unit(e)

        result = fidelity.run_study(plan, Path(args.out), command=command,
                                    kinds=[k.strip() for k in args.kinds.split(",") if k.strip()],
                                    accelerator=args.accelerator, workers=args.workers, data_root=args.data_root,
                                    deadline_s=args.deadline_s, analyse_only=args.analyse_only, progress=show)
    path = result["report"]
    ch = result["chosen"]
    if ch.get("judged") is False:
        _warn(f"noise ceiling tau {result['noise_ceiling_tau']} on {result['n_specs']} specs: the reference seeds do not "
              f"agree, so no signal is chosen (train the references longer or use more specs) -> {path}")
        return 0
    _out.print(f"{result['n_specs']} specs, noise ceiling tau {result['noise_ceiling_tau']}; chosen {ch['name']} "
               f"(tau {ch['tau']}, hold-out {ch['tau_holdout']} on {ch['n_holdout']}) -> {path}")
    return 0


